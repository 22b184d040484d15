// The pipeline's report (stage "report"): OUT/report.md (the table, the findings as paired
// differences, the budgets, the traces' statistics, the settings), OUT/report.json (all of it,
// machine-readable) and OUT/plots/ (scripts/plot_r1_pipeline.py: pass@1 with its interval per
// model, and the students' training curves). Every figure is read from what the stages wrote
// (eval/*.json, */summary.json, */report.json, stages/*.done): the report can be rebuilt at any
// time from the run folder.
#pragma once

#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <map>
#include <sstream>
#include <string>
#include <vector>

#include <kiln/rl/evaluation.hpp>

#include "settings.hpp"
#include "stages.hpp"

namespace r1 {

// What each model is, for the table.
inline std::string describe(const std::string& model, const Settings& s) {
  if (model == "teacher-base") return str("teacher base (", s.config, ", pretrained ", s.teacher_base_steps, " steps)");
  if (model == "cold-start") return str("teacher base + cold-start SFT (", s.cold_start, " examples)");
  if (model == "teacher") return str("teacher: + GRPO (", s.teacher_grpo_steps, " steps)");
  if (model == "student-base") return str("student base (", s.student_config(), ", pretrained ", s.student_base_steps, " steps)");
  if (model == "student-grpo") return str("student + GRPO alone (", s.student_grpo_steps, " steps)");
  if (model == "student-sft") return str("student + SFT on the teacher's traces (", s.distill_steps, " steps)");
  if (model == "student-kd") return str("student + logit KD, T = ", s.kd_temperature, " (", s.distill_steps, " steps)");
  if (model == "student-onpolicy")
    return str("student + on-policy distillation, beta ", s.onpolicy_beta, ", lambda ", s.onpolicy_lambda, " (",
               s.distill_steps, " steps)");
  return model;
}

struct Comparison {
  std::string better, worse, claim;  // models; what better > worse would show
};

// The comparisons each report makes: R1-Zero's (RL improves the teacher), the gap distillation
// needs, and R1's distillation finding (each distilled student against RL on the same student, and
// against its base).
inline std::vector<Comparison> comparisons(const Settings& s) {
  std::vector<Comparison> c{{"teacher", s.cold_start > 0 ? "cold-start" : "teacher-base", "GRPO improves the teacher"},
                            {"teacher", "student-base", "the teacher is stronger than the student's base"}};
  for (const char* kind : {"sft", "kd", "onpolicy"}) {
    const std::string m = str("student-", kind);
    c.push_back({m, "student-grpo", str(m, " beats GRPO on the same student")});
  }
  for (const char* kind : {"sft", "kd", "onpolicy"}) {
    const std::string m = str("student-", kind);
    c.push_back({m, "student-base", str(m, " improves the student's base")});
  }
  return c;
}

inline double stage_seconds(const std::string& out, const std::string& stage) {
  const std::string path = out + "/stages/" + stage + ".done";
  if (!std::filesystem::exists(path)) return 0.0;
  const io::json j = read_json_file(path);
  return j.contains("seconds") ? j["seconds"].get<double>() : 0.0;
}

// The generation rounds of a GRPO run, summed over its steps (metrics.jsonl: a record per step; a
// step logged twice, by a resumed run, counts once).
inline std::int64_t grpo_rounds(const std::string& metrics) {
  std::map<std::int64_t, std::int64_t> rounds;
  std::istringstream in(io::read_text_file(metrics, "r1_pipeline"));
  for (std::string line; std::getline(in, line);) {
    if (line.empty()) continue;
    const io::json j = io::parse_json(line, "r1_pipeline", metrics);
    if (j.contains("step") && j.contains("rounds"))
      rounds[j["step"].get<std::int64_t>()] = j["rounds"].get<std::int64_t>();
  }
  std::int64_t total = 0;
  for (const auto& [step, r] : rounds) total += r;
  return total;
}

inline std::string fmt(double x, int digits = 3) {
  char b[64];
  std::snprintf(b, sizeof b, "%.*f", digits, x);
  return b;
}

inline std::string with_interval(const io::json& i, int digits = 3) {
  return fmt(i["estimate"].get<double>(), digits) + " [" + fmt(i["lo"].get<double>(), digits) + ", " +
         fmt(i["hi"].get<double>(), digits) + "]";
}

// Writes OUT/report.json and OUT/report.md, prints the markdown, and draws OUT/plots/ with
// scripts/plot_r1_pipeline.py from source_dir (no plots when it is empty). Also the --seeds summary's.
inline void write_report(const std::string& out, const io::ordered_json& report, const std::string& md,
                         const std::string& source_dir) {
  write_json_file(out + "/report.json", report);
  io::write_file_atomically(out + "/report.md", md, "r1_pipeline");
  std::printf("%s", md.c_str());
  if (source_dir.empty()) return;
  if (example::run_python(source_dir + "/scripts/plot_r1_pipeline.py", "'" + out + "'"))
    std::printf("plots: %s/plots/\n", out.c_str());
  else std::printf("plots skipped: no python3 with matplotlib (scripts/install-deps.sh installs it)\n");
}

// stages: the pipeline's stage names in order (for the table of times).
inline void report_stage(const std::string& out, const Settings& s, const std::vector<std::string>& stages,
                         const std::string& source_dir, const std::string& machine) {
  io::ordered_json report;
  report["settings"] = to_json(s);
  report["machine"] = machine;
  std::string md = "# R1 pipeline report\n\n";
  md += str("Run folder `", out, "`; ", s.device, " (", machine, "), ", s.dtype, ", seed ", s.seed,
            ". Held-out: ", s.eval_problems, " test-split problems (arithmetic, 1-", s.max_digits,
            " digit operands), never in any training set; pass@1 over k = ", s.eval_k,
            " samples at T = 0.6, top-p 0.95 (95% bootstrap interval), cons@", s.eval_k,
            " (majority vote; Wilson 95%), greedy (Wilson 95%), mean completion length in tokens (bootstrap 95%).\n\n");
  if (!s.teacher_from.empty())
    md += str("The tokenizer, the teacher and its traces are those of `", s.teacher_from,
              "` (--teacher-from): trained once, there, in the stage times below.\n\n");
  md += str("| model | parameters | pass@1 | cons@", s.eval_k, " | greedy | length | format |\n|---|---|---|---|---|---|---|\n");
  io::ordered_json models = io::ordered_json::array();
  for (const std::string& m : evaluated_models(s)) {
    const std::string path = out + "/eval/" + m + ".json";
    check(std::filesystem::exists(path), "r1_pipeline", "no evaluation of ", m, " (", path, ")");
    const io::json e = read_json_file(path);
    md += str("| ", describe(m, s), " | ", e["parameters"].get<std::int64_t>(), " | ", with_interval(e["pass_at_1"]),
              " | ", with_interval(e["cons_at_k"]), " | ", with_interval(e["greedy"]), " | ",
              with_interval(e["mean_length"], 1), " | ", fmt(e["format_rate"].get<double>(), 2), " |\n");
    io::ordered_json row = io::ordered_json::parse(e.dump());
    row["description"] = describe(m, s);
    models.push_back(row);
  }
  report["models"] = models;

  // The findings: each comparison as the paired difference over the same held-out problems.
  md += "\n## Findings\n\nEach row: the better model's pass@1 minus the other's, as the mean of their per-problem "
        "differences on the same held-out problems, with a paired 95% bootstrap interval (rl/evaluation.hpp: "
        "narrower than the two models' own intervals, since both solve or both miss most problems). Holds: the "
        "interval lies above 0.\n\n| claim | difference | paired 95% interval | holds |\n|---|---|---|---|\n";
  io::ordered_json findings = io::ordered_json::array();
  for (const Comparison& c : comparisons(s)) {
    auto rates = [&](const std::string& m) {
      for (const io::ordered_json& row : models)
        if (row["model"].get<std::string>() == m) {
          check(row.contains("per_problem_pass_at_1"), "r1_pipeline", "eval/", m, ".json has no per-problem rates (an ",
                "older evaluation): delete it and stages/eval-", m, ".done, then --resume to evaluate it again");
          return row["per_problem_pass_at_1"].get<std::vector<double>>();
        }
      throw Error(str("r1_pipeline: no evaluation of ", m, " for the finding \"", c.claim, "\""));
    };
    const rl::Interval d = rl::paired_difference_interval(rates(c.better), rates(c.worse));
    md += str("| ", c.claim, " (", c.better, " − ", c.worse, ") | ", d.estimate >= 0.0 ? "+" : "", fmt(d.estimate),
              " | [", fmt(d.lo), ", ", fmt(d.hi), "] | ", d.lo > 0.0 ? "yes" : "no", " |\n");
    findings.push_back({{"claim", c.claim},
                        {"better", c.better},
                        {"worse", c.worse},
                        {"difference", d.estimate},
                        {"lo", d.lo},
                        {"hi", d.hi},
                        {"holds", d.lo > 0.0}});
  }
  report["findings"] = findings;

  // Budgets: what each student's training cost.
  md += "\n## Budgets\n\n| student | optimizer steps | sequences or tokens trained | wall time |\n|---|---|---|---|\n";
  io::ordered_json budgets;
  {
    const std::string grpo = out + "/student-grpo/report.json";
    if (std::filesystem::exists(grpo)) {
      const io::json g = read_json_file(grpo);
      const io::json& run = g["settings"];
      const std::int64_t per_round = run["prompts"].get<std::int64_t>() * run["group"].get<std::int64_t>();
      const std::int64_t seqs = per_round * grpo_rounds(out + "/student-grpo/metrics.jsonl");
      md += str("| student-grpo | ", s.student_grpo_steps, " | ", seqs, " sampled completions (",
                run["prompts"].get<std::int64_t>(), " problems x ", run["group"].get<std::int64_t>(), " a round",
                run.value("dynamic-sampling", false) ? ", rounds of dynamic sampling" : "", ") | ",
                fmt(g["train_seconds"].get<double>(), 1), " s |\n");
      budgets["student-grpo"] = {{"steps", s.student_grpo_steps}, {"completions", seqs},
                                 {"seconds", g["train_seconds"].get<double>()}};
    }
  }
  for (const char* kind : {"sft", "kd", "onpolicy"}) {
    const std::string name = str("student-", kind), path = out + "/" + name + "/summary.json";
    if (!std::filesystem::exists(path)) continue;
    const io::json j = read_json_file(path);
    const double seconds = stage_seconds(out, name);
    md += str("| ", name, " | ", j["steps"].get<std::int64_t>(), " | ", j["tokens"].get<std::int64_t>(),
              " tokens (micro-batches of <= ", s.distill_tokens, ")",
              j.contains("on_policy_samples") ? str(", ", j["on_policy_samples"].get<std::int64_t>(), " sampled") : "",
              " | ", fmt(seconds, 1), " s |\n");
    io::ordered_json b = io::ordered_json::parse(j.dump());
    b["seconds"] = seconds;
    budgets[name] = b;
  }
  report["budgets"] = budgets;

  // The traces.
  const std::string traces = out + "/traces/summary.json";
  if (std::filesystem::exists(traces)) {
    const io::json t = read_json_file(traces);
    md += str("\n## Distillation set\n\nRejection sampling of the GRPO teacher: ", t["problems"].get<std::int64_t>(),
              " training problems x ", t["samples_per_problem"].get<std::int64_t>(), " samples at T = ",
              t["temperature"].get<double>(), ": kept ", t["kept"].get<std::int64_t>(), " of ",
              t["candidates"].get<std::int64_t>(), " (", t["problems_with_a_trace"].get<std::int64_t>(),
              " problems have at least one); rejected ", t["rejected_length"].get<std::int64_t>(), " cut off, ",
              t["rejected_format"].get<std::int64_t>(), " malformed, ", t["rejected_wrong"].get<std::int64_t>(),
              " wrong, ", t["rejected_duplicate"].get<std::int64_t>(), " duplicates. `traces/traces.jsonl`.\n");
    report["traces"] = io::ordered_json::parse(t.dump());
  }

  // Stage times.
  md += "\n## Stages\n\n| stage | wall time |\n|---|---|\n";
  io::ordered_json times;
  double total = 0.0;
  for (const std::string& name : stages) {
    if (name == "report") continue;
    const double t = stage_seconds(out, name);
    times[name] = t;
    total += t;
  }
  for (const auto& [name, t] : times.items()) md += str("| ", name, " | ", fmt(t.get<double>(), 1), " s |\n");
  md += str("| (sum; stages run up to ", s.jobs, " at a time) | ", fmt(total, 1), " s |\n");
  report["stage_seconds"] = times;
  md += "\nLogs: `logs/`; training metrics: `*/metrics.jsonl`; settings: `run.json`.\n";

  write_report(out, report, md, s.plot ? source_dir : "");
}

}  // namespace r1
