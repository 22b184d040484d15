// An expert exchange of one rank that exchanges with itself (nn/expert_exchange.hpp): nn::MoE built
// with it runs its expert parallel code path — counts through the exchange (read to the host on
// the fused path), rows through it and back, the local experts over offsets made on the host — in
// one process, on any device, so that path can be compared with the local one where no second rank
// exists (a one-GPU machine). It counts the exchanges, so a test can tell that the path ran.
#pragma once

#include <cstdint>
#include <vector>

#include <kiln/nn/expert_exchange.hpp>

namespace kiln::testing {

template <class T>
class LoopbackExchange final : public nn::ExpertExchange<T> {
 public:
  explicit LoopbackExchange(Device device) : device_(device) {}

  int ranks() const override { return 1; }
  int rank() const override { return 0; }
  Device device() const override { return device_; }
  std::vector<std::int64_t> all_gather(const std::vector<std::int64_t>& values) override { return values; }
  std::vector<std::int64_t> sum(const std::vector<std::int64_t>& values) override { return values; }
  std::vector<std::int64_t> all_to_all(const std::vector<std::int64_t>& values) override {
    ++count_exchanges;
    return values;
  }
  Tensor<T> all_to_all_rows(const Tensor<T>& rows, const std::vector<std::int64_t>& send,
                            const std::vector<std::int64_t>& recv) override {
    check(send.size() == 1 && recv.size() == 1 && send[0] == recv[0] && send[0] == rows.size(0), "LoopbackExchange",
          "one rank sends its ", rows.size(0), " rows to itself; got send ", send, ", recv ", recv);
    ++row_exchanges;
    return rows;
  }

  int count_exchanges = 0, row_exchanges = 0;

 private:
  Device device_;
};

}  // namespace kiln::testing
