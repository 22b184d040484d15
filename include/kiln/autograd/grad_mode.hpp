// Whether ops record the graph. Off inside NoGradGuard (generation, optimizer updates, and the
// backward functions themselves: kiln has no double backward).
#pragma once

namespace kiln::autograd {

inline bool& grad_mode_flag() {
  thread_local bool enabled = true;
  return enabled;
}

inline bool grad_enabled() { return grad_mode_flag(); }

class NoGradGuard {
 public:
  NoGradGuard() : previous_(grad_mode_flag()) { grad_mode_flag() = false; }
  ~NoGradGuard() { grad_mode_flag() = previous_; }
  NoGradGuard(const NoGradGuard&) = delete;
  NoGradGuard& operator=(const NoGradGuard&) = delete;

 private:
  bool previous_;
};

}  // namespace kiln::autograd

namespace kiln {
using autograd::NoGradGuard;
}
