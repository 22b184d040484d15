// --teacher-from DIR: a run that takes its teacher from another run instead of training one.
//
// Why: the teacher's chain (tokenizer, teacher-base, cold-start, teacher-grpo, traces, and their
// evaluations) is most of a run's time, and comparing students (a DeepSeek-V3-style one against a
// dense Llama, other distillation settings) needs the same teacher and the same traces for every
// student. DIR's finished teacher stages are linked into this run's folder (hard links: nothing is
// copied or written twice where the file system allows them; a copy elsewhere), with their logs
// and marks, and the scheduler then sees them as done. Their marks keep the seconds the stages
// took in DIR, so the report's budgets stay those of the teacher that was trained.
//
// The teacher's stages depend on some of the run's settings (teacher_settings below); DIR's
// run.json must agree with this run's on every one of them, or the run stops and names the
// differences. With --seeds, DIR is a --seeds run: seed N takes DIR/seed-N's teacher (seeds.hpp).
//
// Files are linked before a stage's mark, so an interruption leaves the stage unmarked and the
// next start links it again.
#pragma once

#include <filesystem>
#include <string>
#include <utility>
#include <vector>

#include "scheduler.hpp"
#include "settings.hpp"

namespace r1 {

// The teacher's stages and what each leaves in the run folder.
inline std::vector<std::pair<std::string, std::string>> teacher_stages(const Settings& s) {
  std::vector<std::pair<std::string, std::string>> st{{"tokenizer", "tokenizer"}, {"teacher-base", "teacher-base"}};
  if (s.cold_start > 0) st.push_back({"cold-start", "cold-start"});
  st.push_back({"teacher-grpo", "teacher"});
  st.push_back({"traces", "traces"});
  st.push_back({"eval-teacher-base", "eval/teacher-base.json"});
  if (s.cold_start > 0) st.push_back({"eval-cold-start", "eval/cold-start.json"});
  st.push_back({"eval-teacher", "eval/teacher.json"});
  return st;
}

// The run.json keys the teacher's stages depend on: its size, dtype, device and seed, its training,
// the traces' sampling, the task and the held-out evaluation (the teacher's rows in the report).
// The cold start trains with the distillation settings.
inline std::vector<std::string> teacher_settings(const Settings& s) {
  std::vector<std::string> k{"device", "config", "dtype", "seed", "cold-start", "teacher-base-steps",
                             "teacher-grpo-steps", "grpo-lr-teacher", "grpo-dynamic-sampling", "traces-problems",
                             "traces-samples", "traces-temperature", "max-completion", "max-digits", "eval-problems",
                             "eval-k"};
  if (s.cold_start > 0)
    for (const char* x : {"distill-tokens", "distill-lr", "packing"}) k.push_back(x);
  return k;
}

// Links (or copies) from -> to, a file or a folder tree; `to` must not exist.
inline void link_tree(const std::filesystem::path& from, const std::filesystem::path& to) {
  namespace fs = std::filesystem;
  fs::create_directories(to.parent_path());
  std::error_code ec;
  fs::copy(from, to, fs::copy_options::recursive | fs::copy_options::create_hard_links, ec);
  if (!ec) return;
  fs::remove_all(to);  // hard links refused (another file system): copy
  fs::copy(from, to, fs::copy_options::recursive);
}

// Takes the teacher's stages that this run has not done from the run in `from`. taken_before:
// this run's saved settings name the same `from` (an interrupted take left some stages marked);
// otherwise any teacher stage done here was trained here, and taking the rest would mix two
// teachers.
inline void take_teacher(const std::string& from, const std::string& out, const Settings& s, const Scheduler& sched,
                         bool taken_before) {
  namespace fs = std::filesystem;
  const char* op = "r1_pipeline";
  std::vector<std::pair<std::string, std::string>> missing;
  std::string done_here;
  for (const auto& stage : teacher_stages(s)) {
    if (!sched.done(stage.first)) missing.push_back(stage);
    else done_here += (done_here.empty() ? "" : ", ") + stage.first;
  }
  if (missing.empty()) return;  // taken before (DIR need not exist any more)
  check(taken_before || done_here.empty(), op, "--teacher-from ", from, ": ", out, " trained part of its teacher itself (",
        done_here, " done); taking the rest would mix two teachers: resume it without --teacher-from, or give "
        "another --out");
  check(fs::exists(from + "/run.json"), op, "--teacher-from ", from, ": no run.json there (not an r1_pipeline run folder",
        s.seeds.empty() ? "" : "; with --seeds, DIR is a --seeds run whose seed-N folders hold the teachers", ")");
  check(fs::weakly_canonical(from) != fs::weakly_canonical(out), op, "--teacher-from ", from,
        " is this run's own folder");
  const io::json theirs = read_json_file(from + "/run.json");
  const io::ordered_json ours = to_json(s);
  std::string differences;
  for (const std::string& key : teacher_settings(s)) {
    const std::string mine = ours.at(key).dump(), other = theirs.contains(key) ? theirs[key].dump() : "absent";
    if (mine != other)
      differences += str(differences.empty() ? "" : ", ", key, " (", from, ": ", other, ", this run: ", mine, ")");
  }
  check(differences.empty(), op, "--teacher-from ", from, ": its teacher was made with other settings: ", differences,
        "; give this run the same values");
  for (const auto& [stage, path] : missing)
    check(fs::exists(from + "/stages/" + stage + ".done"), op, "--teacher-from ", from, ": its stage ", stage,
          " is not done (finish that run first: r1_pipeline --resume ", from, ")");
  std::string taken;
  for (const auto& [stage, path] : missing) {
    fs::remove_all(out + "/" + path);  // what an interrupted stage of this run left
    link_tree(from + "/" + path, out + "/" + path);
    if (fs::exists(from + "/logs/" + stage + ".log")) {
      fs::remove(sched.log_path(stage));
      link_tree(from + "/logs/" + stage + ".log", sched.log_path(stage));
    }
    io::write_file_atomically(sched.marker(stage), io::read_text_file(from + "/stages/" + stage + ".done", op), op);
    taken += (taken.empty() ? "" : ", ") + stage;
  }
  std::printf("r1_pipeline: the teacher's stages from %s: %s\n", from.c_str(), taken.c_str());
}

}  // namespace r1
