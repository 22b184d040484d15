// The R1 pipeline end to end (issue 12; docs/r1-pipeline.md): DeepSeek-R1's second finding at toy
// scale — reasoning distilled from a strong model into a small one beats RL on the small model
// alone (R1 paper, Table 6).
//
//               ┌ teacher-base ─ [cold-start] ─ teacher-grpo ─ traces ─┬─ student-sft ──────┐
//   tokenizer ──┤                                                      ├─ student-kd ───────┼─ eval-* ─ report
//               └ student-base ─┬─ student-grpo                        ├─ student-onpolicy ─┘
//                               └──────────────────────────────────────┘
//
// 0. tokenizer      the byte-level BPE tokenizer teacher and student share.
// 1. teacher-base   examples/pretrain: a DeepSeek-V3-style MoE model on worked arithmetic (small on
//                   a CPU, big on a GPU).
// 2. cold-start     optional SFT on worked solutions (--cold-start N).
// 3. teacher-grpo   examples/grpo: R1-Zero-style GRPO from rule rewards.
// 4. traces         rejection sampling of the teacher on training problems: JSONL.
// 5. student-base   examples/pretrain --config tiny|medium with the teacher's tokenizer: a smaller
//                   model of the same family; or a dense Llama of about that size (--student
//                   llama-tiny|llama-medium), as R1-Distill's students were of other families.
// 6. the student four ways from the same base: GRPO alone (examples/grpo), SFT on the traces
//    (R1-Distill), logit KD on the traces, on-policy distillation (GKD).
// 7. every model evaluated on the same held-out problems; report.md, report.json, plots/.
//
// Each stage is a process, logged to OUT/logs/STAGE.log, up to --jobs at a time; a finished stage
// is marked in OUT/stages/ and never rerun, so `r1_pipeline --resume OUT` after an interruption
// continues from the stages that had not finished (each of those from its own last checkpoint).
//
//   r1_pipeline                       CPU defaults (about 14 minutes on 2 cores), GPU defaults with one
//   r1_pipeline --out runs/r1b --seed 2
//   r1_pipeline --resume runs/r1      continue an interrupted run
//   r1_pipeline --seeds 1,2,3         one run per seed and a summary across them (seeds.hpp)
//   r1_pipeline --student llama-tiny --teacher-from runs/r1 --out runs/r1-llama
//                                     another student from runs/r1's teacher and traces (teacher_from.hpp)
//   r1_pipeline --micro               a minute-long configuration (CI checks the whole report)
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <map>
#include <set>
#include <sstream>
#include <string>
#include <vector>

#include "report.hpp"
#include "scheduler.hpp"
#include "seeds.hpp"
#include "settings.hpp"
#include "stages.hpp"
#include "teacher_from.hpp"

#ifdef _OPENMP
#include <omp.h>
#endif

namespace {

using namespace kiln;
using r1::Settings;

const char* kUsage = R"(r1_pipeline: teacher (pretrain + GRPO), rejection-sampled traces, a smaller student trained four ways
(GRPO alone, SFT on the traces, logit KD, on-policy distillation), all evaluated on held-out problems

  --out DIR                 run folder                                                       [runs/r1]
  --resume DIR              continue the run in DIR (its run.json settings are the defaults)
  --stages LIST             run only these stages (comma-separated; the stages they need must be
                            done already or listed too)                                        [all]
  --device cpu|cuda         [cuda when this build has CUDA and a GPU is visible, else cpu]
  --config small|big        teacher small (CPU) or big (~100M, GPU)          [cpu: small, cuda: big]
  --student NAME            tiny or medium: DeepSeek-V3-style, 0.26M and 16M parameters; llama-tiny
                            or llama-medium: dense Llama students of about those sizes
                                                                        [small: tiny, big: medium]
  --teacher-from DIR        take the tokenizer, the teacher and its traces (with their evaluations)
                            from the finished run in DIR instead of training them; its settings
                            must match this run's teacher settings (with --seeds: DIR/seed-N) []
  --dtype float32|bf16      [cpu: float32, cuda: bf16]
  --jobs N                  stages run at once (a GPU is shared by them)                         [2]
  --threads N               CPU threads per stage                                                [1]
  --seed N                                                                                       [1]
  --seeds LIST              one whole run per seed (comma-separated, e.g. 1,2,3; in OUT/seed-N, one
                            after another), then OUT/report.md: pass@1 per seed, the mean, and in
                            how many seeds each of the findings holds                            []
  --micro                   a tiny configuration that runs every stage in about a minute (CI)
  --teacher-base-steps N    pretraining of the teacher's base                                 [2000]
  --cold-start N            SFT of the teacher's base on N worked solutions before GRPO (0: none)  [0]
  --teacher-grpo-steps N                                                         [small 150, big 100]
  --grpo-lr-teacher X       [small 1e-4, big 5e-6]
  --student-base-steps N    pretraining of the student's base                     [small 1500, big 1000]
  --student-grpo-steps N                                                         [small 150, big 100]
  --grpo-lr-student X       [small 2e-4, big 5e-6]
  --grpo-dynamic-sampling on|off  both GRPO runs drop groups whose samples all score alike and
                            draw more problems (DAPO; up to 3 rounds a step)                    [on]
  --traces-problems N       training problems for rejection sampling             [small 1024, big 2048]
  --traces-samples K        samples per problem                                                  [4]
  --traces-temperature X    [0.7]
  --distill-steps N         optimizer steps of each distilled student               [small 120, big 200]
  --distill-tokens N        tokens per micro-batch                             [small 2048, big 16384]
  --packing auto|on|off     packed micro-batches (auto: on a GPU, where the fused attention kernel
                            takes them; the CPU's composed path pays S^2 for a packed row)   [auto]
  --distill-lr X            peak rate (warmup, cosine to a tenth)                  [small 1e-3, big 2e-4]
  --kd-temperature X        logit KD's temperature                                               [1]
  --onpolicy-beta X         generalized JSD's beta (1: reverse KL)                               [1]
  --onpolicy-lambda X       fraction of on-policy micro-batches (the rest: the traces)           [1]
  --onpolicy-prompts N      prompts per on-policy micro-batch                         [small 16, big 64]
  --max-completion N        new tokens per completion at most                      [small 160, big 256]
  --max-digits N            arithmetic operands of 1..N digits (the larger models saturate 2)
                                                                                [small 2, big 3]
  --eval-problems N         held-out problems (distinct, from the test split)                  [200]
  --eval-k K                samples per problem for pass@1 and cons@k                            [8]
  --no-plot                 skip the PNG plots
)";

// The stages this program runs itself (--stage NAME), besides eval-MODEL.
const std::set<std::string> kInProcess = {"tokenizer",  "cold-start",       "traces", "student-sft",
                                           "student-kd", "student-onpolicy", "report", "summary"};

std::string quote(const std::string& s) { return "'" + s + "'"; }

// The stage graph (see the file comment) with each stage's command.
std::vector<r1::Stage> stage_graph(const std::string& self, const std::string& out, const Settings& s) {
  const std::string dir = std::filesystem::path(self).parent_path().string();
  const std::string pretrain = quote(dir + "/pretrain"), grpo = quote(dir + "/grpo");
  const std::string common = str(" --device ", s.device, " --dtype ", s.dtype, " --threads ", s.threads);
  // A sibling program's run resumes when its folder has a run.json (it was started before).
  auto resumable = [&](const std::string& program, const std::string& folder, const std::string& fresh) {
    return str("if [ -f ", quote(folder + "/run.json"), " ]; then exec ", program, " --resume ", quote(folder), common,
               "; else exec ", program, " --out ", quote(folder), common, fresh, "; fi");
  };
  const std::string corpus = str(" --max-digits ", s.max_digits + 1, " --countdown-fraction 0 --samples 0");
  const std::string tokenizer = " --tokenizer " + quote(out + "/tokenizer/tokenizer.json");
  std::vector<r1::Stage> g;
  g.push_back({"tokenizer", {}, str("exec ", quote(self), " --stage tokenizer --resume ", quote(out))});
  g.push_back({"teacher-base", {"tokenizer"},
               resumable(pretrain, out + "/teacher-base",
                         str(" --config ", s.config, tokenizer, " --steps ", s.teacher_base_steps, " --seed ", s.seed,
                             corpus))});
  std::string teacher_start = "teacher-base";
  if (s.cold_start > 0) {
    g.push_back({"cold-start", {"teacher-base"}, str("exec ", quote(self), " --stage cold-start --resume ", quote(out))});
    teacher_start = "cold-start";
  }
  const std::string grpo_common = str(" --max-completion ", s.max_completion, " --max-digits ", s.max_digits,
                                      " --eval-problems ", std::min<std::int64_t>(50, s.eval_problems),
                                      " --eval-k 4 --no-plot --seed ", s.seed,
                                      s.grpo_dynamic_sampling ? " --dynamic-sampling" : "");
  g.push_back({"teacher-grpo", {teacher_start},
               resumable(grpo, out + "/teacher",
                         str(" --base ", quote(out + "/" + teacher_start), " --config ", s.config, " --steps ",
                             s.teacher_grpo_steps, " --lr ", r1::shortest(s.grpo_lr_teacher), grpo_common))});
  g.push_back({"traces", {"teacher-grpo"}, str("exec ", quote(self), " --stage traces --resume ", quote(out))});
  // The student's base needs only the tokenizer: with 2 jobs it trains beside the teacher's.
  g.push_back({"student-base", {"tokenizer"},
               resumable(pretrain, out + "/student-base",
                         str(" --config ", s.student_config(), tokenizer, " --steps ", s.student_base_steps,
                             " --seed ", s.seed + 1, corpus))});
  g.push_back({"student-grpo", {"student-base"},
               resumable(grpo, out + "/student-grpo",
                         str(" --base ", quote(out + "/student-base"), " --config ", s.config, " --steps ",
                             s.student_grpo_steps, " --lr ", r1::shortest(s.grpo_lr_student), grpo_common))});
  for (const char* kind : {"sft", "kd", "onpolicy"})
    g.push_back({str("student-", kind), {"student-base", "traces"},
                 str("exec ", quote(self), " --stage student-", kind, " --resume ", quote(out))});
  std::vector<std::string> evals;
  for (const std::string& m : r1::evaluated_models(s)) {
    const std::string producer = m == "teacher" ? "teacher-grpo" : m;
    g.push_back({"eval-" + m, {producer}, str("exec ", quote(self), " --stage eval-", m, " --resume ", quote(out))});
    evals.push_back("eval-" + m);
  }
  g.push_back({"report", evals, str("exec ", quote(self), " --stage report --resume ", quote(out))});
  return g;
}

// --stages LIST: the listed stages, each of whose dependencies must be done or listed.
std::vector<r1::Stage> select_stages(const std::vector<r1::Stage>& all, const std::string& list, const r1::Scheduler& sched) {
  if (list == "all") return all;
  std::set<std::string> wanted, names;
  for (const r1::Stage& s : all) names.insert(s.name);
  std::stringstream in(list);
  for (std::string name; std::getline(in, name, ',');) {
    if (name.empty()) continue;
    if (!names.count(name)) {
      std::string valid;
      for (const r1::Stage& s : all) valid += " " + s.name;
      throw Error("--stages: unknown stage \"" + name + "\"; the stages of this run are:" + valid);
    }
    wanted.insert(name);
  }
  std::vector<r1::Stage> out;
  for (const r1::Stage& s : all) {
    if (!wanted.count(s.name)) continue;
    for (const std::string& a : s.after)
      if (!wanted.count(a) && !sched.done(a))
        throw Error("--stages: " + s.name + " needs " + a + ", which is neither done in this run folder nor listed");
    out.push_back(s);
  }
  return out;
}

template <class T>
void run_in_process(const std::string& stage, const std::string& out, const Settings& s, const std::vector<std::string>& order) {
  if (stage == "tokenizer") return r1::tokenizer_stage(out, s);
  if (stage == "cold-start") return r1::cold_start_stage<T>(out, s);
  if (stage == "traces") return r1::traces_stage<T>(out, s);
  if (stage.rfind("student-", 0) == 0) return r1::student_stage<T>(out, s, stage.substr(8));
  if (stage.rfind("eval-", 0) == 0) return r1::eval_stage<T>(out, s, stage.substr(5));
#ifdef KILN_SOURCE_DIR
  const std::string source = KILN_SOURCE_DIR;  // for scripts/plot_r1_pipeline.py
#else
  const std::string source;
#endif
  if (stage == "summary") return r1::summary_stage(out, s, source);
  if (stage == "report") {
    std::string machine = s.device == "cuda" ? "GPU" : example::cpu_description();
#ifdef KILN_EXAMPLE_CUDA
    if (s.device == "cuda") {
      cudaDeviceProp p{};
      if (cudaGetDeviceProperties(&p, 0) == cudaSuccess) machine = p.name;
    }
#endif
    return r1::report_stage(out, s, order, source, machine);
  }
  throw Error("r1_pipeline: unknown --stage " + stage);
}

// --micro: every stage at a size that runs in about a minute on 2 cores (CI runs it). The teacher's
// 120 pretraining steps (most of the run's time) are about the fewest after which its rejection
// sampling keeps traces for the students' SFT: 5 of 192 (200 steps kept 10).
void apply_micro(example::Flags& f) {
  for (const auto& [k, v] : std::vector<std::pair<std::string, std::string>>{
           {"teacher-base-steps", "120"}, {"teacher-grpo-steps", "2"}, {"student-base-steps", "40"},
           {"student-grpo-steps", "2"}, {"traces-problems", "48"}, {"traces-samples", "4"}, {"distill-steps", "6"},
           {"distill-tokens", "512"}, {"onpolicy-prompts", "4"}, {"max-completion", "48"}, {"eval-problems", "12"},
           {"eval-k", "2"}, {"traces-temperature", "1.0"}, {"max-digits", "1"}})
    if (!f.has(k)) f.set(k, v);
}

}  // namespace

int main(int argc, char** argv) try {
  example::Flags f(argc, argv, {"no-plot", "micro"});
  if (f.has("help")) {
    std::fputs(kUsage, stdout);
    return 0;
  }
  const std::string resume = f.str("resume", "");
  const std::string out = f.str("out", resume.empty() ? "runs/r1" : resume);
  const std::string stage = f.str("stage", "");
  io::json saved = io::json::object();
  if (!resume.empty()) {
    const std::string path = resume + "/run.json";
    check(std::filesystem::exists(path), "r1_pipeline", "--resume ", resume, ": no run.json there (not an r1_pipeline run folder)");
    saved = r1::read_json_file(path);
  }
  if (f.flag("micro")) apply_micro(f);
  const std::string stages_list = f.str("stages", "all");
  check(!(f.has("seed") && f.has("seeds")), "r1_pipeline", "give --seed or --seeds, not both");
  const Settings s = r1::parse_settings(f, saved);
  f.check_all_used();
  check(s.seeds.empty() || stages_list == "all", "r1_pipeline",
        "--stages selects stages of one run; with --seeds, run it on a seed's folder: "
        "--resume OUT/seed-N --stages ...");
  if (s.device == "cuda") {
#ifndef KILN_EXAMPLE_CUDA
    throw Error("--device cuda needs a build with the CUDA backend (cmake -DKILN_CUDA=ON)");
#endif
  }
#ifdef _OPENMP
  omp_set_num_threads(static_cast<int>(s.threads));
#endif
  const std::string self = std::filesystem::canonical("/proc/self/exe").string();
  std::filesystem::create_directories(out);
  const std::string abs_out = std::filesystem::absolute(out).lexically_normal().string();
  r1::Scheduler scheduler(abs_out, static_cast<int>(s.jobs));
  const std::vector<r1::Stage> graph = stage_graph(self, abs_out, s);
  std::vector<std::string> order;
  for (const r1::Stage& g : graph) order.push_back(g.name);

  if (!stage.empty()) {  // one in-process stage of an existing run
    check(!resume.empty(), "r1_pipeline", "--stage needs --resume DIR (the run it belongs to)");
    const bool known = kInProcess.count(stage) || (stage.rfind("eval-", 0) == 0);
    check(known, "r1_pipeline", "--stage ", stage, " is not a stage this program runs itself");
    if (s.dtype == "bf16") run_in_process<bf16>(stage, abs_out, s, order);
    else run_in_process<float>(stage, abs_out, s, order);
    return 0;
  }

  // One folder holds one kind of run: a single run's stages, or a --seeds run's seed-N folders.
  bool has_seed_runs = false;
  for (const auto& e : std::filesystem::directory_iterator(abs_out + "/stages"))
    has_seed_runs |= e.path().filename().string().rfind("seed-", 0) == 0;
  check(s.seeds.empty() ? !has_seed_runs : !scheduler.done("tokenizer"), "r1_pipeline", abs_out, " holds ",
        s.seeds.empty() ? "a run over several seeds (--seeds)" : "a single run", "; give this one another --out");
  // The student's stages are done with one student: another needs another run folder (its teacher
  // can be taken from this one). Folders from before --student had the size's default.
  if (!resume.empty() && s.seeds.empty()) {
    const std::string before =
        saved.contains("student") ? saved["student"].get<std::string>() : s.big() ? "medium" : "tiny";
    check(before == s.student || !scheduler.done("student-base"), "r1_pipeline", "--student ", s.student, ": ", abs_out,
          " trained a ", before, " student already; give this student another --out (--teacher-from ", abs_out,
          " takes this run's teacher)");
  }
  // Another run's teacher, taken before the settings are recorded: a refused take leaves them as
  // they were.
  if (s.seeds.empty() && !s.teacher_from.empty()) {
    const bool taken_before = saved.contains("teacher-from") && saved["teacher-from"] == s.teacher_from;
    r1::take_teacher(s.teacher_from, abs_out, s, scheduler, taken_before);
  }
  // A new run records its settings; a resumed one keeps them (flags given now override them, and
  // are recorded, for stages not done yet).
  r1::write_json_file(abs_out + "/run.json", r1::to_json(s));
  if (!s.seeds.empty()) {  // one run per seed, one at a time, then the summary
    r1::Scheduler outer(abs_out, 1);
    // The summary is made again every time (0.2 s): a resumed run may list more seeds than before.
    std::filesystem::remove(outer.marker("summary"));
    std::printf("r1_pipeline: %zu seeds, one run each in %s/seed-N, then a summary\n", s.seeds.size(), abs_out.c_str());
    std::fflush(stdout);
    const auto start = std::chrono::steady_clock::now();
    const bool ok = outer.run(r1::seeds_graph(self, abs_out, s));
    const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    if (!ok) {
      std::printf("r1_pipeline: stopped after %.1f s; finished runs and stages are kept: r1_pipeline --resume %s "
                  "continues\n", seconds, abs_out.c_str());
      return 1;
    }
    std::printf("r1_pipeline: %zu seeds done in %.1f s; summary %s/report.md\n", s.seeds.size(), seconds,
                abs_out.c_str());
    return 0;
  }
  const std::vector<r1::Stage> selected = select_stages(graph, stages_list, scheduler);
  std::printf("r1_pipeline: %s, %s teacher, %s student, %s; run folder %s; %zu stages (%lld at a time)\n",
              s.device.c_str(), s.config.c_str(), s.student_config().c_str(), s.dtype.c_str(), abs_out.c_str(),
              selected.size(), static_cast<long long>(s.jobs));
  std::fflush(stdout);
  const auto start = std::chrono::steady_clock::now();
  const bool ok = scheduler.run(selected);
  const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  if (!ok) {
    std::printf("r1_pipeline: stopped after %.1f s; finished stages are kept: r1_pipeline --resume %s continues\n",
                seconds, abs_out.c_str());
    return 1;
  }
  std::printf("r1_pipeline: done in %.1f s; report %s/report.md\n", seconds, abs_out.c_str());
  return 0;
} catch (const std::exception& e) {
  // This program's own checks read "kiln::r1_pipeline: ...": printed as "r1_pipeline: ..."; a
  // library op's error keeps its name after the program's ("r1_pipeline: kiln::load_model: ...").
  std::string what = e.what();
  if (what.rfind("kiln::r1_pipeline", 0) == 0) what = what.substr(6);
  std::fprintf(stderr, "%s%s\n", what.rfind("r1_pipeline", 0) == 0 ? "" : "r1_pipeline: ", what.c_str());
  return 1;
}
