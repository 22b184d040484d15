// The pipeline over several seeds (--seeds 1,2,3): one whole run per seed, then a summary of the
// findings across them.
//
// Why: at toy scale a run's outcome hangs on its seed. On the CPU defaults (2026-12-05) the small
// teacher's base solved 0.34, 0.07 and 0.59 of the held-out problems at seeds 1, 2 and 3 (its
// validation loss after 1200 steps 0.48, 0.58 and 0.38: the seeds learn the digit algorithm at
// different steps), so one seed can show a finding that the next does not. The summary says in how
// many seeds each comparison holds, and in how many its paired interval lies above 0.
//
// Layout: OUT/run.json holds the settings with their seed list; OUT/seed-N is a complete run folder
// of its own (its run.json the same settings with seed N: `r1_pipeline --resume OUT/seed-N` works
// on it alone). The outer run is a stage graph like a single run's: a stage "seed-N" per seed (this
// program on OUT/seed-N; one seed at a time, each running its own stages --jobs at a time) and
// "summary" after them; interrupted, `--resume OUT` continues each seed where it stopped.
// OUT/report.md and OUT/report.json: pass@1 per model and seed, the mean and its standard error
// over the seeds, and the comparisons below; OUT/plots/seeds.png (scripts/plot_r1_pipeline.py).
#pragma once

#include <cmath>
#include <filesystem>
#include <string>
#include <vector>

#include "report.hpp"
#include "scheduler.hpp"
#include "settings.hpp"
#include "stages.hpp"

namespace r1 {

inline std::string seed_folder(const std::string& out, std::uint64_t seed) { return str(out, "/seed-", seed); }

// The outer graph: seed-N for each seed (in the order given), then the summary.
inline std::vector<Stage> seeds_graph(const std::string& self, const std::string& out, const Settings& s) {
  std::vector<Stage> g;
  std::vector<std::string> names;
  for (std::uint64_t seed : s.seeds) {
    const std::string folder = seed_folder(out, seed);
    // The seed's settings are written before it starts, so that the run resumes with them.
    Settings one = s;
    one.seed = seed;
    one.seeds.clear();
    if (!s.teacher_from.empty()) one.teacher_from = seed_folder(s.teacher_from, seed);
    std::filesystem::create_directories(folder);
    write_json_file(folder + "/run.json", to_json(one));
    names.push_back(str("seed-", seed));
    g.push_back({names.back(), {}, str("exec '", self, "' --resume '", folder, "'")});
  }
  g.push_back({"summary", names, str("exec '", self, "' --stage summary --resume '", out, "'")});
  return g;
}

// Mean and standard error of the mean (0 for one value).
inline std::pair<double, double> mean_and_error(const std::vector<double>& x) {
  double mean = 0.0;
  for (double v : x) mean += v;
  mean /= static_cast<double>(x.size());
  if (x.size() < 2) return {mean, 0.0};
  double ss = 0.0;
  for (double v : x) ss += (v - mean) * (v - mean);
  return {mean, std::sqrt(ss / static_cast<double>(x.size() - 1) / static_cast<double>(x.size()))};
}

// The summary stage: reads OUT/seed-N/report.json of every seed.
// source_dir: the source tree, for the plot (none when empty).
inline void summary_stage(const std::string& out, const Settings& s, const std::string& source_dir) {
  check(!s.seeds.empty(), "r1_pipeline", "the summary stage needs a run with --seeds");
  std::vector<io::json> reports;
  for (std::uint64_t seed : s.seeds) {
    const std::string path = seed_folder(out, seed) + "/report.json";
    check(std::filesystem::exists(path), "r1_pipeline", "no report of seed ", seed, " (", path, ")");
    reports.push_back(read_json_file(path));
  }
  // pass@1 of model m at seed i: its estimate and interval.
  auto pass = [&](std::size_t i, const std::string& m) -> io::json {
    for (const io::json& row : reports[i]["models"])
      if (row["model"].get<std::string>() == m) return row["pass_at_1"];
    throw Error(str("r1_pipeline: the report of seed ", s.seeds[i], " has no model ", m));
  };
  const std::size_t n = s.seeds.size();
  std::string head = "|", rule = "|";
  for (std::uint64_t seed : s.seeds) head += str(" seed ", seed, " |"), rule += "---|";

  io::ordered_json report;
  report["settings"] = to_json(s);
  std::string md = "# R1 pipeline report: " + std::to_string(n) + " seeds\n\n";
  md += str("Run folder `", out, "`: one complete run per seed in `seed-N/` (each with its own report.md). ",
            s.device, ", ", s.dtype, "; every model of a seed evaluated on that seed's ", s.eval_problems,
            " held-out problems (pass@1 over k = ", s.eval_k,
            " samples at T = 0.6; the 95% intervals are in each seed's report). Mean: over the seeds, with its "
            "standard error.\n\n");
  md += "## pass@1\n\n| model " + head + " mean |\n|---" + rule + "---|\n";
  io::ordered_json models = io::ordered_json::array();
  for (const std::string& m : evaluated_models(s)) {
    std::vector<double> x;
    md += "| " + describe(m, s) + " |";
    for (std::size_t i = 0; i < n; ++i) {
      x.push_back(pass(i, m)["estimate"].get<double>());
      md += str(" ", fmt(x.back()), " |");  // (not " " + string: GCC 12 warns -Wrestrict, a false alarm)
    }
    const auto [mean, error] = mean_and_error(x);
    md += str(" ", fmt(mean), " ± ", fmt(error), " |\n");
    models.push_back(
        {{"model", m}, {"description", describe(m, s)}, {"pass_at_1", x}, {"mean", mean}, {"error", error}});
  }
  report["models"] = models;

  // The finding c at seed i, from that seed's report: its paired difference and interval.
  auto finding = [&](std::size_t i, const Comparison& c) -> io::json {
    if (reports[i].contains("findings"))
      for (const io::json& f : reports[i]["findings"])
        if (f["better"] == c.better && f["worse"] == c.worse) return f;
    const std::string folder = seed_folder(out, s.seeds[i]);
    throw Error(str("r1_pipeline: the report of seed ", s.seeds[i], " has no finding \"", c.claim, "\" (an older ",
                    "report: delete ", folder, "/stages/report.done, then r1_pipeline --resume ", folder, ")"));
  };
  md += "\n## The findings, seed by seed\n\nEach cell: the better model's pass@1 minus the other's on that seed's "
        "held-out problems; * where the paired 95% interval of the difference (in the seed's report) lies above 0. "
        "Holds: the seeds with a positive difference (and with the interval above 0).\n\n";
  md += "| claim " + head + " mean | holds |\n|---" + rule + "---|---|\n";
  io::ordered_json findings = io::ordered_json::array();
  for (const Comparison& c : comparisons(s)) {
    std::vector<double> d, lo, hi;
    int positive = 0, beyond_noise = 0;
    md += "| " + c.claim + " (" + c.better + " − " + c.worse + ") |";
    for (std::size_t i = 0; i < n; ++i) {
      const io::json f = finding(i, c);
      d.push_back(f["difference"].get<double>());
      lo.push_back(f["lo"].get<double>());
      hi.push_back(f["hi"].get<double>());
      positive += d.back() > 0.0;
      beyond_noise += lo.back() > 0.0;
      md += str(" ", d.back() >= 0.0 ? "+" : "", fmt(d.back()), lo.back() > 0.0 ? "*" : "", " |");
    }
    const auto [mean, error] = mean_and_error(d);
    md += str(" ", mean >= 0.0 ? "+" : "", fmt(mean), " ± ", fmt(error), " | ", positive, " of ", n, " (",
              beyond_noise, ") |\n");
    findings.push_back({{"claim", c.claim}, {"better", c.better}, {"worse", c.worse}, {"difference", d}, {"lo", lo},
                        {"hi", hi}, {"mean", mean}, {"error", error}, {"positive", positive},
                        {"beyond_noise", beyond_noise}});
  }
  report["findings"] = findings;
  md += "\nEach seed's budgets, distillation set and stage times: `seed-N/report.md`; the plot: `plots/seeds.png`.\n";
  write_report(out, report, md, s.plot ? source_dir : "");
}

}  // namespace r1
