#!/usr/bin/env bash
# The test r1_pipeline_micro (CI): the whole pipeline at --micro size writes a complete report; a
# resumed run redoes exactly the stages whose marks are gone; bad stage lists are refused with a
# clear message. Usage: check_micro.sh PATH/TO/r1_pipeline WORKDIR
set -euo pipefail
bin=$1
out=$2/run
rm -rf "$2"
mkdir -p "$2"
fail() { echo "r1_pipeline_micro: $*" >&2; exit 1; }

"$bin" --micro --out "$out" | tee "$2/first.log"
[ -f "$out/report.md" ] || fail "no report.md"
for model in "teacher base" "teacher: + GRPO" "student base" "student + GRPO alone" "student + SFT on the teacher" \
    "student + logit KD" "student + on-policy"; do
  grep -q "| $model" "$out/report.md" || fail "report.md has no row for \"$model\""
done
python3 - "$out" <<'PY'
import json, sys
out = sys.argv[1]
r = json.load(open(f"{out}/report.json"))
assert len(r["models"]) == 7, r["models"]
for m in r["models"]:
    for key in ("pass_at_1", "cons_at_k", "greedy", "mean_length"):
        i = m[key]
        assert i["lo"] <= i["estimate"] <= i["hi"], (m["model"], key, i)
for kind in ("sft", "kd", "onpolicy"):
    lines = [json.loads(l) for l in open(f"{out}/student-{kind}/metrics.jsonl") if l.strip()]
    assert any("val_loss" in l for l in lines) and any("loss" in l for l in lines), kind
traces = [json.loads(l) for l in open(f"{out}/traces/traces.jsonl") if l.strip()]
assert all(set(t) >= {"prompt", "completion", "reward", "source", "seed", "problem"} for t in traces)
print("report.json, metrics and traces: complete")
PY
if /usr/bin/python3 -c "import matplotlib" 2>/dev/null || python3 -c "import matplotlib" 2>/dev/null; then
  for png in accuracy students; do [ -s "$out/plots/$png.png" ] || fail "no plots/$png.png"; done
fi

# Resume: only the stages whose marks are removed run again.
rm "$out/stages/eval-student-kd.done" "$out/stages/report.done" "$out/report.md"
"$bin" --resume "$out" | tee "$2/resumed.log"
grep -q "start eval-student-kd" "$2/resumed.log" || fail "the resumed run did not redo eval-student-kd"
grep -q "start report" "$2/resumed.log" || fail "the resumed run did not redo the report"
if grep -q "start teacher-base\|start traces" "$2/resumed.log"; then fail "the resumed run redid finished stages"; fi
[ -f "$out/report.md" ] || fail "no report.md after resuming"

# A selection of stages: only those run, their inputs being done.
rm "$out/stages/student-sft.done" "$out/stages/eval-student-sft.done"
"$bin" --resume "$out" --stages student-sft,eval-student-sft | tee "$2/selected.log"
grep -q "start student-sft" "$2/selected.log" && grep -q "start eval-student-sft" "$2/selected.log" ||
  fail "--stages student-sft,eval-student-sft did not run them"
if grep -q "start report" "$2/selected.log"; then fail "--stages ran a stage it does not list"; fi

# Bad stage lists.
if "$bin" --resume "$out" --stages bogus 2> "$2/bad.log"; then fail "--stages bogus was accepted"; fi
grep -q "unknown stage \"bogus\"" "$2/bad.log" || fail "no clear message for an unknown stage: $(cat "$2/bad.log")"
if "$bin" --micro --out "$2/fresh" --stages student-kd 2> "$2/bad.log"; then fail "a stage without its inputs ran"; fi
grep -q "student-kd needs student-base" "$2/bad.log" || fail "no clear message for missing inputs: $(cat "$2/bad.log")"
# --seeds: the summary over runs. Two copies of the finished run stand for two seeds (their stages
# are done, so nothing reruns): every difference is the same in both, with a standard error of 0.
multi=$2/multi
for seed in 1 2; do mkdir -p "$multi" && cp -r "$out" "$multi/seed-$seed"; done
"$bin" --micro --seeds 1,2 --out "$multi" | tee "$2/seeds.log"
grep -q "start teacher-base" "$2/seeds.log" && fail "--seeds reran a finished seed"
[ -f "$multi/report.md" ] || fail "no summary report.md for --seeds 1,2"
python3 - "$out" "$multi" <<'PY'
import json, sys
one = json.load(open(f"{sys.argv[1]}/report.json"))
multi = json.load(open(f"{sys.argv[2]}/report.json"))
p = {m["model"]: m["pass_at_1"]["estimate"] for m in one["models"]}
assert [m["model"] for m in multi["models"]] == list(p), multi["models"]
for m in multi["models"]:
    assert m["pass_at_1"] == [p[m["model"]]] * 2 and abs(m["mean"] - p[m["model"]]) < 1e-12 and m["error"] == 0, m
rates = {m["model"]: m["per_problem_pass_at_1"] for m in one["models"]}
assert all(len(r) == one["models"][0]["problems"] for r in rates.values())
for f in one["findings"]:  # the paired difference: the mean of the per-problem differences
    d = p[f["better"]] - p[f["worse"]]
    paired = sum(a - b for a, b in zip(rates[f["better"]], rates[f["worse"]])) / len(rates[f["better"]])
    assert abs(f["difference"] - d) < 1e-12 and abs(paired - d) < 1e-12, f
    assert f["lo"] <= f["difference"] <= f["hi"] and f["holds"] == (f["lo"] > 0), f
# The student's GRPO budget counts every round of dynamic sampling (a round: 16 problems x 8).
rounds = {}
for line in open(f"{sys.argv[1]}/student-grpo/metrics.jsonl"):
    r = json.loads(line)
    if "rounds" in r:
        rounds[r["step"]] = r["rounds"]
assert one["budgets"]["student-grpo"]["completions"] == 128 * sum(rounds.values()), one["budgets"]
single = {(f["better"], f["worse"]): f for f in one["findings"]}
for f in multi["findings"]:
    o = single[(f["better"], f["worse"])]
    assert f["difference"] == [o["difference"]] * 2 and f["lo"] == [o["lo"]] * 2 and f["hi"] == [o["hi"]] * 2, f
    assert f["positive"] == (2 if o["difference"] > 0 else 0) and f["beyond_noise"] == (2 if o["holds"] else 0), f
print("--seeds summary: consistent with the run it repeats")
PY
if /usr/bin/python3 -c "import matplotlib" 2>/dev/null || python3 -c "import matplotlib" 2>/dev/null; then
  [ -s "$multi/plots/seeds.png" ] || fail "no plots/seeds.png for --seeds 1,2"
fi
for bad in "1,x" "1,1" "0" "1,,2"; do
  if "$bin" --micro --seeds "$bad" --out "$2/bad-seeds" 2> "$2/bad.log"; then fail "--seeds $bad was accepted"; fi
  grep -q -- "--seeds" "$2/bad.log" || fail "no clear message for --seeds $bad: $(cat "$2/bad.log")"
done
if "$bin" --micro --seeds 1,2 --seed 3 --out "$2/bad-seeds" 2> "$2/bad.log"; then fail "--seed with --seeds ran"; fi
if "$bin" --resume "$multi" --stages summary 2> "$2/bad.log"; then fail "--stages with --seeds ran"; fi
grep -q "seed-N" "$2/bad.log" || fail "no clear message for --stages with --seeds: $(cat "$2/bad.log")"
# One folder, one kind of run.
if "$bin" --micro --seeds 1,2 --out "$out" 2> "$2/bad.log"; then fail "--seeds ran in a single run's folder"; fi
grep -q "holds a single run" "$2/bad.log" || fail "no clear message for --seeds over a single run: $(cat "$2/bad.log")"
if "$bin" --micro --out "$multi" 2> "$2/bad.log"; then fail "a single run ran in a --seeds folder"; fi
grep -q "holds a run over several seeds" "$2/bad.log" || fail "no clear message: $(cat "$2/bad.log")"
# Another student from the same teacher (--teacher-from): a dense Llama. The teacher's stages are
# taken, not run; the student's are Llama models; the teacher's settings must match.
llama=$2/llama
"$bin" --micro --student llama-tiny --teacher-from "$out" --out "$llama" | tee "$2/llama.log"
grep -q "the teacher's stages from" "$2/llama.log" || fail "--teacher-from did not say what it took"
if grep -q "start teacher-base\|start traces\|start tokenizer" "$2/llama.log"; then
  fail "--teacher-from retrained the teacher"
fi
grep -q "| student base (llama-tiny" "$llama/report.md" || fail "report.md does not name the llama-tiny student"
python3 - "$out" "$llama" <<'PY'
import json, sys
one, llama = (json.load(open(f"{d}/report.json")) for d in sys.argv[1:])
rows = {d: {m["model"]: m for m in r["models"]} for d, r in (("one", one), ("llama", llama))}
for m in ("teacher-base", "teacher"):  # the same teacher, evaluated once
    assert rows["llama"][m]["pass_at_1"] == rows["one"][m]["pass_at_1"], m
for m in ("student-base", "student-grpo", "student-sft", "student-kd", "student-onpolicy"):
    assert rows["llama"][m]["parameters"] != rows["one"][m]["parameters"], m
for stage in ("student-base", "student-grpo", "student-sft"):
    cfg = json.load(open(f"{sys.argv[2]}/{stage}/checkpoint/config.json"))
    assert cfg["model_type"] == "llama", (stage, cfg["model_type"])
print("--teacher-from with a Llama student: the teacher's rows equal, the students Llama")
PY
# The taken teacher is the run's own: it resumes with the source run gone.
mv "$out" "$out.away" && rm "$llama/stages/report.done"
"$bin" --resume "$llama" > "$2/llama-resumed.log" || fail "a --teacher-from run did not resume without its source"
mv "$out.away" "$out"
if "$bin" --resume "$llama" --student tiny 2> "$2/bad.log"; then fail "a finished student was swapped on resume"; fi
grep -q "trained a llama-tiny student already" "$2/bad.log" || fail "no clear message: $(cat "$2/bad.log")"
if "$bin" --micro --seed 2 --teacher-from "$out" --out "$2/bad-teacher" 2> "$2/bad.log"; then
  fail "--teacher-from took a teacher of another seed"
fi
grep -qF "seed ($(cd "$out" && pwd): 1, this run: 2)" "$2/bad.log" || fail "no clear message: $(cat "$2/bad.log")"
# A run that trained part of its teacher takes no other's.
rm "$out/stages/traces.done"
if "$bin" --resume "$out" --teacher-from "$llama" --stages traces 2> "$2/bad.log"; then
  fail "--teacher-from mixed two teachers"
fi
grep -q "trained part of its teacher itself" "$2/bad.log" || fail "no clear message: $(cat "$2/bad.log")"
"$bin" --resume "$out" --stages traces > /dev/null || fail "the run did not finish its own traces"
# With --seeds, seed N takes DIR/seed-N's teacher (one seed: a second costs CI half a minute).
"$bin" --micro --seeds 2 --student llama-tiny --teacher-from "$multi" --out "$2/multi-llama" > "$2/multi-llama.log"
[ -f "$2/multi-llama/report.md" ] || fail "no summary for --seeds with --teacher-from"
for seed in 2; do
  grep -q "those of \`$(cd "$multi" && pwd)/seed-$seed\`" "$2/multi-llama/seed-$seed/report.md" ||
    fail "seed $seed did not take seed-$seed's teacher"
done
echo "r1_pipeline_micro: passed"
