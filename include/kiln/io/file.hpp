// Files that survive crashes: positioned reads that report truncation, and atomic writes.
//
// A file is written into an unnamed temporary file in its directory (Linux O_TMPFILE), flushed to
// disk (fsync), given the name "<path>.tmp.<pid>" and renamed over <path>; the rename is atomic,
// so a reader (or a restart after a crash) sees either the old complete file or the new complete
// one, never a mix. A process killed while writing leaves nothing behind: the kernel frees an
// unnamed file when its last descriptor closes. Where O_TMPFILE is not available (another OS,
// some network file systems) the data goes to "<path>.tmp.<pid>" from the start; each save first
// removes the temporaries of the same target whose process is gone, so killed saves do not pile
// up. The parent directory is fsynced too, so the rename itself is durable. A directory (a
// checkpoint) is written as "<dir>.tmp" and swapped into place the same way; the previous
// directory is removed only once the new one is complete.
//
// Saves replace only what they would write: a destination that exists as something else (a
// directory where a file goes, a regular file where a checkpoint directory goes, a symbolic link
// for either) is an error, never deleted.
//
// POSIX only (open/pread/fsync/rename), like the rest of kiln's host code.
#pragma once

#include <fcntl.h>
#include <signal.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstdint>
#include <cstdio>
#include <filesystem>
#include <functional>
#include <optional>
#include <string>
#include <string_view>
#include <system_error>

#include "kiln/core/error.hpp"

namespace kiln::io {

namespace detail {

inline std::string errno_text(int e) { return std::error_code(e, std::generic_category()).message(); }

// "dir/" and "dir" name the same directory; the temporary names are built from the latter.
inline std::string strip_trailing_slashes(std::string path) {
  while (path.size() > 1 && path.back() == '/') path.pop_back();
  return path;
}

inline std::string parent_directory(const std::string& path) {
  const std::filesystem::path parent = std::filesystem::path(path).parent_path();
  return parent.empty() ? std::string(".") : parent.string();
}

}  // namespace detail

// Makes the entries of a directory (new files, renames) durable. Some file systems cannot fsync
// a directory (EINVAL); there is nothing more to do on those.
inline void fsync_directory(const std::string& dir, const char* op) {
  const int fd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (fd < 0) fail(op, dir, ": cannot open directory to sync it: ", detail::errno_text(errno));
  const int rc = ::fsync(fd);
  const int e = errno;
  ::close(fd);
  if (rc != 0 && e != EINVAL && e != EROFS) fail(op, dir, ": fsync of the directory failed: ", detail::errno_text(e));
}

// A regular file opened for reading at any position.
class InputFile {
 public:
  InputFile(std::string path, const char* op) : path_(std::move(path)), op_(op) {
    fd_ = ::open(path_.c_str(), O_RDONLY | O_CLOEXEC);
    if (fd_ < 0) fail(op_, path_, ": cannot open: ", detail::errno_text(errno));
    struct stat st {};
    if (::fstat(fd_, &st) != 0) {
      const int e = errno;
      ::close(fd_);
      fail(op_, path_, ": cannot stat: ", detail::errno_text(e));
    }
    if (!S_ISREG(st.st_mode)) {
      ::close(fd_);
      fail(op_, path_, ": not a regular file");
    }
    size_ = static_cast<std::uint64_t>(st.st_size);
  }
  InputFile(const InputFile&) = delete;
  InputFile& operator=(const InputFile&) = delete;
  ~InputFile() { ::close(fd_); }

  const std::string& path() const { return path_; }
  std::uint64_t size() const { return size_; }

  // Reads exactly n bytes at `offset`; a file that ends early (truncated after it was opened) is
  // an error, not a short read.
  void read_at(std::uint64_t offset, void* dst, std::uint64_t n) const {
    auto* out = static_cast<char*>(dst);
    while (n > 0) {
      const std::size_t chunk = static_cast<std::size_t>(n < (std::uint64_t(1) << 30) ? n : (std::uint64_t(1) << 30));
      const ssize_t got = ::pread(fd_, out, chunk, static_cast<off_t>(offset));
      if (got < 0) {
        if (errno == EINTR) continue;
        fail(op_, path_, ": read failed at byte ", offset, ": ", detail::errno_text(errno));
      }
      if (got == 0) fail(op_, path_, ": unexpected end of file at byte ", offset, " (truncated while reading?)");
      out += got;
      offset += static_cast<std::uint64_t>(got);
      n -= static_cast<std::uint64_t>(got);
    }
  }

 private:
  std::string path_;
  const char* op_;
  int fd_ = -1;
  std::uint64_t size_ = 0;
};

namespace detail {

// What is at `path` without following a symbolic link: nullopt when nothing is there.
inline std::optional<mode_t> entry_type(const std::string& path, const char* op) {
  struct stat st {};
  if (::lstat(path.c_str(), &st) == 0) return st.st_mode & S_IFMT;
  if (errno == ENOENT) return std::nullopt;
  fail(op, path, ": cannot stat: ", errno_text(errno));
}

inline const char* entry_type_name(mode_t type) {
  switch (type) {
    case S_IFREG: return "a regular file";
    case S_IFDIR: return "a directory";
    case S_IFLNK: return "a symbolic link";
    default: return "a special file";
  }
}

// Removes "<name>.tmp.<pid>" files next to `path` whose writing process no longer exists (a save
// that was killed before O_TMPFILE, or where O_TMPFILE is unavailable). A live pid's file is kept:
// that process may be writing it now.
inline void remove_stale_temporaries(const std::string& path) {
  namespace fs = std::filesystem;
  const std::string prefix = fs::path(path).filename().string() + ".tmp.";
  std::error_code ec;
  for (fs::directory_iterator it(parent_directory(path), ec), end; !ec && it != end; it.increment(ec)) {
    const std::string name = it->path().filename().string();
    if (name.size() <= prefix.size() || name.compare(0, prefix.size(), prefix) != 0) continue;
    const std::string digits = name.substr(prefix.size());
    if (digits.size() > 9 || digits.find_first_not_of("0123456789") != std::string::npos) continue;
    const pid_t pid = static_cast<pid_t>(std::stol(digits));
    if (pid <= 0 || pid == ::getpid() || ::kill(pid, 0) == 0 || errno != ESRCH) continue;
    std::error_code ignored;
    if (it->is_regular_file(ignored)) fs::remove(it->path(), ignored);
  }
}

}  // namespace detail

// Writes a file that replaces <path> on commit() (see the file comment). Destroyed without
// commit() (an exception midway), it leaves no temporary file and <path> untouched.
class AtomicFileWriter {
 public:
  AtomicFileWriter(std::string path, const char* op)
      : path_(std::move(path)), tmp_(path_ + ".tmp." + std::to_string(::getpid())), op_(op) {
    if (const auto type = detail::entry_type(path_, op_); type && *type != S_IFREG)
      fail(op_, path_, ": exists and is ", detail::entry_type_name(*type), ", not a regular file; kiln replaces only "
           "regular files (remove it or choose another path)");
    detail::remove_stale_temporaries(path_);
#if defined(O_TMPFILE)
    if (::access("/proc/self/fd", X_OK) == 0)  // commit() names the file through it
      fd_ = ::open(detail::parent_directory(path_).c_str(), O_TMPFILE | O_WRONLY | O_CLOEXEC, 0644);
    anonymous_ = fd_ >= 0;
#endif
    if (fd_ < 0) fd_ = ::open(tmp_.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (fd_ < 0) fail(op_, path_, ": cannot create ", tmp_, ": ", detail::errno_text(errno));
    named_ = !anonymous_;
  }
  AtomicFileWriter(const AtomicFileWriter&) = delete;
  AtomicFileWriter& operator=(const AtomicFileWriter&) = delete;
  ~AtomicFileWriter() {
    if (fd_ >= 0) ::close(fd_);
    if (!committed_ && named_) ::unlink(tmp_.c_str());
  }

  const std::string& path() const { return path_; }
  std::uint64_t bytes_written() const { return written_; }

  void write(const void* data, std::uint64_t n) {
    check(fd_ >= 0, op_, path_, ": write after commit");
    const auto* in = static_cast<const char*>(data);
    while (n > 0) {
      const std::size_t chunk = static_cast<std::size_t>(n < (std::uint64_t(1) << 30) ? n : (std::uint64_t(1) << 30));
      const ssize_t put = ::write(fd_, in, chunk);
      if (put < 0) {
        if (errno == EINTR) continue;
        fail(op_, path_, ": write to ", tmp_, " failed: ", detail::errno_text(errno));
      }
      in += put;
      n -= static_cast<std::uint64_t>(put);
      written_ += static_cast<std::uint64_t>(put);
    }
  }
  void write(std::string_view s) { write(s.data(), s.size()); }

  void commit() {
    check(fd_ >= 0, op_, path_, ": committed twice");
    if (::fsync(fd_) != 0) fail(op_, path_, ": fsync of ", tmp_, " failed: ", detail::errno_text(errno));
    if (anonymous_) give_name();
    named_ = true;
    const int rc = ::close(fd_);
    fd_ = -1;
    if (rc != 0) fail(op_, path_, ": close of ", tmp_, " failed: ", detail::errno_text(errno));
    if (std::rename(tmp_.c_str(), path_.c_str()) != 0)
      fail(op_, path_, ": cannot rename ", tmp_, " over it: ", detail::errno_text(errno));
    committed_ = true;
    fsync_directory(detail::parent_directory(path_), op_);
  }

 private:
  // Links the unnamed file in as tmp_ (rename cannot take an unnamed file, and linkat cannot
  // replace an existing name): through /proc/self/fd, which needs no privilege.
  void give_name() {
    ::unlink(tmp_.c_str());  // our pid's name: left by a killed process that had this pid before
    const std::string self = "/proc/self/fd/" + std::to_string(fd_);
    if (::linkat(AT_FDCWD, self.c_str(), AT_FDCWD, tmp_.c_str(), AT_SYMLINK_FOLLOW) != 0)
      fail(op_, path_, ": cannot link the written file as ", tmp_, ": ", detail::errno_text(errno));
  }

  std::string path_, tmp_;
  const char* op_;
  int fd_ = -1;
  bool anonymous_ = false;  // written through O_TMPFILE: no name until commit()
  bool named_ = false;      // tmp_ exists on disk (from the start, or once commit() linked it)
  bool committed_ = false;
  std::uint64_t written_ = 0;
};

inline void write_file_atomically(const std::string& path, std::string_view contents, const char* op) {
  AtomicFileWriter w(path, op);
  w.write(contents);
  w.commit();
}

inline std::string read_text_file(const std::string& path, const char* op) {
  InputFile f(path, op);
  check(f.size() <= (std::uint64_t(1) << 30), op, path, ": ", f.size(), " bytes is too large for a text file");
  std::string s(static_cast<std::size_t>(f.size()), '\0');
  f.read_at(0, s.data(), s.size());
  return s;
}

// Where a directory written by write_directory_atomically lives: `dir`, or "<dir>.old" when a
// crash came between the two renames of the fallback swap (then "<dir>.old" is the last
// complete one).
inline std::string committed_directory(const std::string& dir) {
  const std::string d = detail::strip_trailing_slashes(dir);
  std::error_code ec;
  if (!std::filesystem::exists(d, ec) && std::filesystem::is_directory(d + ".old", ec)) return d + ".old";
  return d;
}

// Writes a directory as a unit: `write(tmp)` fills "<dir>.tmp" (every file in it written with
// AtomicFileWriter, so each is fsynced), then the directory replaces <dir>. Linux swaps the two
// with one atomic renameat2(RENAME_EXCHANGE); elsewhere <dir> is renamed to "<dir>.old" first
// (committed_directory() finds it if a crash comes before the second rename). If `write` throws,
// "<dir>.tmp" is removed and <dir> is left as it was.
inline void write_directory_atomically(const std::string& dir_in, const std::function<void(const std::string&)>& write,
                                       const char* op) {
  namespace fs = std::filesystem;
  const std::string dir = detail::strip_trailing_slashes(dir_in);
  const std::string tmp = dir + ".tmp", old = dir + ".old";
  if (const auto type = detail::entry_type(dir, op); type && *type != S_IFDIR)
    fail(op, dir, ": exists and is ", detail::entry_type_name(*type), ", not a directory; kiln replaces only a directory "
         "it wrote (remove it or choose another path)");
  std::error_code ec;
  fs::remove_all(tmp, ec);  // left by an earlier crash: never the last good checkpoint
  if (ec) fail(op, dir, ": cannot remove stale ", tmp, ": ", ec.message());
  if (!fs::create_directories(tmp, ec) || ec) fail(op, dir, ": cannot create ", tmp, ": ", ec.message());
  try {
    write(tmp);
    fsync_directory(tmp, op);
  } catch (...) {
    fs::remove_all(tmp, ec);
    throw;
  }
  const std::string parent = detail::parent_directory(dir);
  if (!fs::exists(dir, ec)) {
    if (std::rename(tmp.c_str(), dir.c_str()) != 0)
      fail(op, dir, ": cannot rename ", tmp, " to it: ", detail::errno_text(errno));
  } else {
    bool swapped = false;
#if defined(__linux__) && defined(RENAME_EXCHANGE)
    swapped = ::renameat2(AT_FDCWD, tmp.c_str(), AT_FDCWD, dir.c_str(), RENAME_EXCHANGE) == 0;
    if (swapped) {
      fsync_directory(parent, op);
      fs::remove_all(tmp, ec);  // now the previous directory
    }
#endif
    if (!swapped) {
      fs::remove_all(old, ec);
      if (std::rename(dir.c_str(), old.c_str()) != 0)
        fail(op, dir, ": cannot move the previous directory to ", old, ": ", detail::errno_text(errno));
      if (std::rename(tmp.c_str(), dir.c_str()) != 0)
        fail(op, dir, ": cannot rename ", tmp, " to it (the previous one is in ", old, "): ", detail::errno_text(errno));
    }
  }
  fsync_directory(parent, op);
  fs::remove_all(old, ec);
}

}  // namespace kiln::io
