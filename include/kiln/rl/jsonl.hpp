// A JSON Lines writer for training and evaluation metrics: one JSON object per line, e.g.
//   {"step":1,"reward_mean":0.25,"kl":0.001,...}
// Each record is serialised first and handed to the kernel in one write(2) on a file opened with
// O_APPEND, so a crash of the process loses no record already written and never leaves half a
// line from a completed write. (No fsync per line: a power loss may drop the last records, which
// a rerun of the step regenerates; checkpoints, not metrics, carry the training state.)
// Non-finite numbers have no JSON spelling; nlohmann/json writes them as null, which
// scripts/plot_grpo.py skips.
#pragma once

#include <fcntl.h>
#include <unistd.h>

#include <cerrno>
#include <string>

#include "kiln/core/error.hpp"
#include "kiln/io/file.hpp"
#include "kiln/io/json.hpp"

namespace kiln::rl {

class JsonlWriter {
 public:
  // Opens (creating) `path`; append = false truncates an existing file (a fresh run), true keeps
  // its records (a resumed run).
  explicit JsonlWriter(const std::string& path, bool append = false) : path_(path) {
    const int flags = O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC | (append ? 0 : O_TRUNC);
    fd_ = ::open(path.c_str(), flags, 0644);
    if (fd_ < 0) fail("JsonlWriter", "cannot open \"", path, "\" for writing: ", io::detail::errno_text(errno));
  }
  JsonlWriter(const JsonlWriter&) = delete;
  JsonlWriter& operator=(const JsonlWriter&) = delete;
  ~JsonlWriter() {
    if (fd_ >= 0) ::close(fd_);
  }

  // Appends `record` (a JSON object) as one line.
  void write(const io::json& record) {
    check(record.is_object(), "JsonlWriter::write", "a record must be a JSON object, got ", record.type_name(),
          " (file \"", path_, "\")");
    // Metrics may carry model-generated text, which byte-level BPE can cut inside a UTF-8
    // character: such bytes are written as U+FFFD rather than losing the record (or the run).
    const std::string line = record.dump(-1, ' ', false, io::json::error_handler_t::replace) + "\n";
    std::size_t done = 0;
    while (done < line.size()) {
      const ssize_t n = ::write(fd_, line.data() + done, line.size() - done);
      if (n < 0 && errno == EINTR) continue;
      if (n < 0) fail("JsonlWriter::write", "writing \"", path_, "\" failed: ", io::detail::errno_text(errno));
      done += static_cast<std::size_t>(n);
    }
  }

  const std::string& path() const { return path_; }

 private:
  std::string path_;
  int fd_ = -1;
};

}  // namespace kiln::rl
