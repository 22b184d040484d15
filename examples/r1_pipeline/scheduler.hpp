// The pipeline's stages as a dependency graph of shell commands, run `jobs` at a time.
//
// Every stage is a process (a sibling program such as pretrain or grpo, or this program again with
// --stage NAME), its output in OUT/logs/NAME.log. A stage that exits 0 is marked done
// (OUT/stages/NAME.done, written atomically), and a later run of the pipeline skips it: an
// interruption loses at most the stages that were running, and those resume from their own
// checkpoints. A stage starts when every stage it depends on is done; with 2 jobs on a 2-core
// machine the teacher's and the student's chains share the cores. When one fails, no new stage
// starts, the running ones finish, and the failing log's last lines are printed.
//
// Progress: a line when a stage starts or ends (with its wall time), and every `progress_seconds`
// the newest line of each running stage's log.
#pragma once

#include <fcntl.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <map>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include <kiln/core/error.hpp>
#include <kiln/io/file.hpp>

extern char** environ;

namespace r1 {

struct Stage {
  std::string name;
  std::vector<std::string> after;  // stages that must be done first
  std::string command;             // run by /bin/sh -c
};

class Scheduler {
 public:
  Scheduler(std::string out, int jobs, double progress_seconds = 20.0)
      : out_(std::move(out)), jobs_(jobs), progress_seconds_(progress_seconds) {
    kiln::check(jobs_ >= 1, "r1_pipeline", "--jobs must be at least 1, got ", jobs_);
    std::filesystem::create_directories(out_ + "/stages");
    std::filesystem::create_directories(out_ + "/logs");
  }

  std::string marker(const std::string& stage) const { return out_ + "/stages/" + stage + ".done"; }
  std::string log_path(const std::string& stage) const { return out_ + "/logs/" + stage + ".log"; }
  bool done(const std::string& stage) const { return std::filesystem::exists(marker(stage)); }

  // Runs every stage that is not done yet; returns whether all are done.
  bool run(const std::vector<Stage>& stages) {
    using Clock = std::chrono::steady_clock;
    std::map<std::string, const Stage*> by_name;
    for (const Stage& s : stages) by_name[s.name] = &s;
    // A stage may wait for one outside this selection (--stages) only if that one is done.
    for (const Stage& s : stages)
      for (const std::string& a : s.after)
        kiln::check(by_name.count(a) > 0 || done(a), "r1_pipeline", "stage ", s.name, " waits for ", a,
                    ", which is neither done nor among the stages to run");
    struct Running {
      const Stage* stage;
      Clock::time_point start;
    };
    std::map<pid_t, Running> running;
    std::set<std::string> started;
    bool failed = false;
    auto last_progress = Clock::now();
    for (;;) {
      // Start what is ready.
      for (const Stage& s : stages) {
        if (failed || static_cast<int>(running.size()) >= jobs_) break;
        if (done(s.name) || started.count(s.name)) continue;
        bool ready = true;
        for (const std::string& a : s.after) ready = ready && done(a);
        if (!ready) continue;
        started.insert(s.name);
        std::printf("[r1] start %-18s (log %s)\n", s.name.c_str(), log_path(s.name).c_str());
        std::fflush(stdout);
        running[spawn(s)] = {&s, Clock::now()};
      }
      if (running.empty()) break;
      // Wait for a stage to end, printing progress meanwhile.
      int status = 0;
      const pid_t pid = ::waitpid(-1, &status, WNOHANG);
      if (pid <= 0) {
        std::this_thread::sleep_for(std::chrono::milliseconds(200));
        if (std::chrono::duration<double>(Clock::now() - last_progress).count() >= progress_seconds_) {
          for (const auto& [p, r] : running)
            std::printf("[r1]   %-18s %5.0f s | %s\n", r.stage->name.c_str(),
                        std::chrono::duration<double>(Clock::now() - r.start).count(),
                        last_line(log_path(r.stage->name)).c_str());
          std::fflush(stdout);
          last_progress = Clock::now();
        }
        continue;
      }
      const auto it = running.find(pid);
      if (it == running.end()) continue;
      const Stage& s = *it->second.stage;
      const double seconds = std::chrono::duration<double>(Clock::now() - it->second.start).count();
      running.erase(it);
      if (WIFEXITED(status) && WEXITSTATUS(status) == 0) {
        kiln::io::write_file_atomically(marker(s.name), kiln::str("{\"seconds\": ", seconds, "}\n"), "r1_pipeline");
        std::printf("[r1] done  %-18s %.1f s\n", s.name.c_str(), seconds);
      } else {
        failed = true;
        std::printf("[r1] FAILED %s after %.1f s (%s); the end of %s:\n%s", s.name.c_str(), seconds,
                    WIFEXITED(status) ? kiln::str("exit status ", WEXITSTATUS(status)).c_str() : "killed by a signal",
                    log_path(s.name).c_str(), tail(log_path(s.name), 15).c_str());
      }
      std::fflush(stdout);
    }
    for (const Stage& s : stages)
      if (!done(s.name)) return false;
    return true;
  }

 private:
  pid_t spawn(const Stage& s) const {
    posix_spawn_file_actions_t actions;
    posix_spawn_file_actions_init(&actions);
    const std::string log = log_path(s.name);
    posix_spawn_file_actions_addopen(&actions, 1, log.c_str(), O_WRONLY | O_CREAT | O_APPEND, 0644);
    posix_spawn_file_actions_adddup2(&actions, 1, 2);
    const std::string command = s.command;
    char sh[] = "/bin/sh", dash_c[] = "-c";
    std::vector<char> cmd(command.begin(), command.end());
    cmd.push_back('\0');
    char* argv[] = {sh, dash_c, cmd.data(), nullptr};
    pid_t pid = 0;
    const int rc = posix_spawn(&pid, "/bin/sh", &actions, nullptr, argv, environ);
    posix_spawn_file_actions_destroy(&actions);
    kiln::check(rc == 0, "r1_pipeline", "could not start stage ", s.name, " (posix_spawn error ", rc, ")");
    return pid;
  }

  // The last `n` lines of a file.
  static std::string tail(const std::string& path, std::size_t n) {
    std::ifstream in(path);
    std::vector<std::string> lines;
    for (std::string line; std::getline(in, line);) lines.push_back(line);
    std::string out;
    for (std::size_t i = lines.size() > n ? lines.size() - n : 0; i < lines.size(); ++i) out += "    " + lines[i] + "\n";
    return out;
  }

  // The last line of a log, shortened (without the "[r1]" of a nested pipeline's progress line:
  // a --seeds run's stages are pipelines).
  static std::string last_line(const std::string& path) {
    std::string t = tail(path, 1);
    while (!t.empty() && (t.back() == '\n' || t.back() == ' ')) t.pop_back();
    std::size_t first = t.find_first_not_of(' ');
    if (first != std::string::npos && t.compare(first, 4, "[r1]") == 0) first = t.find_first_not_of(' ', first + 4);
    t = first == std::string::npos ? "" : t.substr(first);
    return t.size() > 110 ? t.substr(0, 107) + "..." : t;
  }

  std::string out_;
  int jobs_;
  double progress_seconds_;
};

}  // namespace r1
