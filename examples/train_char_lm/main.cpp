// A tiny character-level language model trained with kiln's autograd on the CPU: the MLP model of
// Bengio et al. (2003): embed the previous `context` characters, concatenate, one tanh hidden layer,
// softmax over the next character. Prints the loss falling and samples text at the end.
//
//   train_char_lm [--steps N] [--context N] [--embed N] [--hidden N] [--batch N] [--lr X] [--seed N]
#include <kiln/kiln.hpp>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <iostream>
#include <map>
#include <string>
#include <vector>

namespace {

// A small built-in corpus, so the example needs no download.
const char* kCorpus =
    "to be, or not to be, that is the question: whether tis nobler in the mind to suffer the slings "
    "and arrows of outrageous fortune, or to take arms against a sea of troubles and by opposing end "
    "them. to die, to sleep, no more; and by a sleep to say we end the heart-ache and the thousand "
    "natural shocks that flesh is heir to: tis a consummation devoutly to be wished. to die, to sleep; "
    "to sleep, perchance to dream, ay, there's the rub: for in that sleep of death what dreams may "
    "come, when we have shuffled off this mortal coil, must give us pause. there's the respect that "
    "makes calamity of so long life. for who would bear the whips and scorns of time, the oppressor's "
    "wrong, the proud man's contumely, the pangs of despised love, the law's delay, the insolence of "
    "office, and the spurns that patient merit of the unworthy takes, when he himself might his "
    "quietus make with a bare bodkin? who would fardels bear, to grunt and sweat under a weary life, "
    "but that the dread of something after death, the undiscovered country from whose bourn no "
    "traveller returns, puzzles the will, and makes us rather bear those ills we have than fly to "
    "others that we know not of? thus conscience does make cowards of us all.";

struct Options {
  int steps = 1500, context = 8, embed = 16, hidden = 128, batch = 64;
  double lr = 3e-3;
  std::uint64_t seed = 1;
};

Options parse(int argc, char** argv) {
  Options o;
  for (int i = 1; i < argc; ++i) {
    const std::string flag = argv[i];
    if (flag == "--help" || flag == "-h") {
      std::puts("train_char_lm [--steps N] [--context N] [--embed N] [--hidden N] [--batch N] [--lr X] [--seed N]");
      std::exit(0);
    }
    if (i + 1 >= argc) throw kiln::Error("train_char_lm: flag " + flag + " needs a value");
    const char* v = argv[++i];
    if (flag == "--steps") o.steps = std::atoi(v);
    else if (flag == "--context") o.context = std::atoi(v);
    else if (flag == "--embed") o.embed = std::atoi(v);
    else if (flag == "--hidden") o.hidden = std::atoi(v);
    else if (flag == "--batch") o.batch = std::atoi(v);
    else if (flag == "--lr") o.lr = std::atof(v);
    else if (flag == "--seed") o.seed = std::strtoull(v, nullptr, 10);
    else throw kiln::Error("train_char_lm: unknown flag " + flag + " (see --help)");
  }
  if (o.steps < 1 || o.context < 1 || o.embed < 1 || o.hidden < 1 || o.batch < 1 || !(o.lr > 0))
    throw kiln::Error("train_char_lm: every size must be positive");
  return o;
}

}  // namespace

int main(int argc, char** argv) try {
  using namespace kiln;
  const Options o = parse(argc, argv);
  manual_seed(o.seed);

  // Vocabulary: the corpus's distinct characters.
  const std::string text = kCorpus;
  std::map<char, std::int64_t> id_of;
  std::string chars;
  for (char c : text)
    if (!id_of.count(c)) id_of[c] = 0;
  for (auto& [c, id] : id_of) id = static_cast<std::int64_t>(chars.size()), chars.push_back(c);
  const std::int64_t vocab = static_cast<std::int64_t>(chars.size());
  std::vector<std::int64_t> ids;
  for (char c : text) ids.push_back(id_of[c]);
  const std::int64_t n_windows = static_cast<std::int64_t>(ids.size()) - o.context;

  // Parameters, initialised with std 1/sqrt(fan_in).
  const std::int64_t in_width = o.context * o.embed;
  auto emb = randn<float>({vocab, o.embed}, 0.0, 1.0).requires_grad_();
  auto w1 = randn<float>({in_width, o.hidden}, 0.0, 1.0 / std::sqrt(double(in_width))).requires_grad_();
  auto b1 = zeros<float>({o.hidden}).requires_grad_();
  auto w2 = randn<float>({o.hidden, vocab}, 0.0, 1.0 / std::sqrt(double(o.hidden))).requires_grad_();
  auto b2 = zeros<float>({vocab}).requires_grad_();
  optim::AdamW<float> opt({emb, w1, b1, w2, b2}, {.lr = o.lr, .weight_decay = 0.0});

  auto forward = [&](const Tensor<std::int64_t>& x) {  // x: [B, context] -> logits [B, vocab]
    auto e = reshape(embedding(emb, x), {x.size(0), in_width});
    return add(matmul(tanh(add(matmul(e, w1), b1)), w2), b2);
  };

  std::printf("train_char_lm: %zu characters, vocab %lld, context %d, %lld parameters, %d steps\n", text.size(),
              static_cast<long long>(vocab), o.context,
              static_cast<long long>(emb.numel() + w1.numel() + b1.numel() + w2.numel() + b2.numel()), o.steps);
  Generator batch_rng{o.seed + 1, 0};
  const auto start = std::chrono::steady_clock::now();
  double first_loss = 0, last_loss = 0;
  for (int step = 1; step <= o.steps; ++step) {
    // A random batch of windows: inputs ids[s .. s+context), target ids[s+context].
    const auto starts = randint<std::int64_t>(0, n_windows, {o.batch}, Device::cpu(), batch_rng).to_vector();
    std::vector<std::int64_t> xs, ys;
    for (auto s : starts) {
      for (int k = 0; k < o.context; ++k) xs.push_back(ids[static_cast<std::size_t>(s + k)]);
      ys.push_back(ids[static_cast<std::size_t>(s + o.context)]);
    }
    auto loss = cross_entropy(forward(tensor<std::int64_t>(xs, {o.batch, o.context})), tensor<std::int64_t>(ys));
    opt.zero_grad();
    loss.backward();
    // Cosine decay to 10% of the peak rate.
    opt.set_lr(o.lr * (0.55 + 0.45 * std::cos(3.141592653589793 * (step - 1) / o.steps)));
    opt.step();
    last_loss = loss.item();
    if (step == 1) first_loss = last_loss;
    if (step == 1 || step % 100 == 0 || step == o.steps) {
      const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
      std::printf("step %5d  loss %.4f  lr %.2e  %.0f chars/s\n", step, last_loss, opt.options().lr,
                  step * double(o.batch) / secs);
      std::fflush(stdout);
    }
  }

  // Greedy-free sampling from the model's distribution, seeded by the corpus start.
  NoGradGuard no_grad;
  std::vector<std::int64_t> window(ids.begin(), ids.begin() + o.context);
  std::string sample(text.begin(), text.begin() + o.context);
  Generator sample_rng{o.seed + 2, 0};
  for (int i = 0; i < 200; ++i) {
    auto probs = softmax(forward(tensor<std::int64_t>(window, {1, o.context})), -1).to_vector();
    double u = rand<double>({1}, 0.0, 1.0, Device::cpu(), sample_rng).item(), acc = 0;
    std::int64_t next = vocab - 1;
    for (std::int64_t c = 0; c < vocab; ++c)
      if ((acc += probs[static_cast<std::size_t>(c)]) > u) {
        next = c;
        break;
      }
    sample.push_back(chars[static_cast<std::size_t>(next)]);
    window.erase(window.begin());
    window.push_back(next);
  }
  std::printf("loss %.4f -> %.4f\nsample: %s\n", first_loss, last_loss, sample.c_str());
  return last_loss < first_loss ? 0 : 1;
} catch (const std::exception& e) {
  std::fprintf(stderr, "%s\n", e.what());
  return 1;
}
