// The block allocator of a paged KV cache (the paged layout of ops/paged_attention.hpp): the cache
// is a pool of fixed-size blocks of `block_tokens` token rows, and each sequence owns a list of
// blocks, its row of the block table, so sequences grow one block at a time, give their blocks
// back when they finish, and share blocks they have in common.
//
// Sharing. The G samples of a GRPO group start from one prompt: fork(parent, child) gives the child
// the parent's block list, and each shared block counts its owners. A block is written only by a
// sequence that owns it alone: before a sequence writes position p, prepare_write(seq, p) makes the
// block holding p private — a block shared with others is replaced in this sequence's list by a
// fresh one, and the caller copies the rows that were already there (the returned BlockCopy: the
// first `rows` rows of block `from` into block `to`, in every layer). Only the last, partly
// filled block of a prompt is ever copied this way (the full ones are never written again), so a
// group of G samples over a P-token prompt holds ceil(P / block_tokens) shared blocks plus at most
// one private copy each, instead of G copies of the whole prompt (vLLM's copy-on-write; Kwon et al.
// 2023, "Efficient Memory Management for Large Language Model Serving with PagedAttention").
//
// Invariants (checked by the tests after every operation): every block is either free or owned,
// and an owned block's reference count equals the number of sequences whose list holds it; a
// sequence's list covers its reserved length, ceil(length / block_tokens) blocks; free blocks are
// handed out lowest id first, so runs are reproducible.
//
// The allocator is host bookkeeping (a few integers per block); table() is the block table the
// kernels read, [sequences, max_blocks] int64 with −1 past a sequence's blocks, uploaded once per
// change of the lists (not per token: a sequence needs a new block every block_tokens tokens).
#pragma once

#include <algorithm>
#include <cstdint>
#include <set>
#include <vector>

#include "kiln/core/error.hpp"

namespace kiln::infer {

// Copy the first `rows` token rows of block `from` into block `to` (every layer's cache).
struct BlockCopy {
  std::int64_t from = -1, to = -1, rows = 0;
};

class BlockAllocator {
 public:
  // A pool of num_blocks blocks of block_tokens rows, for up to `sequences` sequences of up to
  // max_blocks blocks each (the block table's shape).
  BlockAllocator(std::int64_t num_blocks, std::int64_t block_tokens, std::int64_t sequences, std::int64_t max_blocks)
      : block_tokens_(block_tokens), max_blocks_(max_blocks), refs_(static_cast<std::size_t>(std::max<std::int64_t>(num_blocks, 0)), 0),
        lists_(static_cast<std::size_t>(std::max<std::int64_t>(sequences, 0))),
        lengths_(static_cast<std::size_t>(std::max<std::int64_t>(sequences, 0)), 0) {
    check(num_blocks > 0 && block_tokens > 0 && sequences > 0 && max_blocks > 0, "BlockAllocator",
          "num_blocks (", num_blocks, "), block_tokens (", block_tokens, "), sequences (", sequences,
          ") and max_blocks (", max_blocks, ") must be positive");
    for (std::int64_t b = 0; b < num_blocks; ++b) free_.insert(b);
  }

  std::int64_t block_tokens() const { return block_tokens_; }
  std::int64_t num_blocks() const { return static_cast<std::int64_t>(refs_.size()); }
  std::int64_t num_sequences() const { return static_cast<std::int64_t>(lists_.size()); }
  std::int64_t max_blocks() const { return max_blocks_; }
  std::int64_t free_blocks() const { return static_cast<std::int64_t>(free_.size()); }
  // Blocks needed for `tokens` token rows.
  std::int64_t blocks_for(std::int64_t tokens) const { return (tokens + block_tokens_ - 1) / block_tokens_; }

  // Sequence seq's reserved length (tokens its blocks cover for it) and blocks.
  std::int64_t length(std::int64_t seq) const { return lengths_[index(seq, "length")]; }
  const std::vector<std::int64_t>& blocks(std::int64_t seq) const { return lists_[index(seq, "blocks")]; }
  std::int64_t references(std::int64_t block) const {
    check(block >= 0 && block < num_blocks(), "BlockAllocator", "block ", block, " is outside [0, ", num_blocks(), ")");
    return refs_[static_cast<std::size_t>(block)];
  }

  // Grows sequence seq to cover `tokens` rows (never shrinks): new blocks for the rows past its
  // blocks. All or nothing: with too few free blocks it throws and changes nothing.
  void reserve(std::int64_t seq, std::int64_t tokens) {
    const std::size_t s = index(seq, "reserve");
    check(tokens >= 0, "BlockAllocator::reserve", "tokens must not be negative, got ", tokens);
    std::vector<std::int64_t>& list = lists_[s];
    const std::int64_t need = blocks_for(tokens) - static_cast<std::int64_t>(list.size());
    check(blocks_for(tokens) <= max_blocks_, "BlockAllocator::reserve", "sequence ", seq, " needs ", blocks_for(tokens),
          " blocks for ", tokens, " tokens, more than the block table's ", max_blocks_, " per sequence");
    if (need > 0) {
      check(need <= free_blocks(), "BlockAllocator::reserve", "out of blocks: sequence ", seq, " needs ", need,
            " more for ", tokens, " tokens; ", free_blocks(), " of ", num_blocks(), " are free");
      for (std::int64_t i = 0; i < need; ++i) list.push_back(take());
    }
    lengths_[s] = std::max(lengths_[s], tokens);
  }

  // child (which must hold no blocks) shares parent's blocks and length: a prompt's blocks for the
  // samples of its group.
  void fork(std::int64_t parent, std::int64_t child) {
    const std::size_t p = index(parent, "fork"), c = index(child, "fork");
    check(parent != child, "BlockAllocator::fork", "a sequence cannot fork itself (", parent, ")");
    check(lists_[c].empty(), "BlockAllocator::fork", "sequence ", child, " still holds ", lists_[c].size(),
          " blocks: release it first");
    lists_[c] = lists_[p];
    lengths_[c] = lengths_[p];
    for (std::int64_t b : lists_[c]) ++refs_[static_cast<std::size_t>(b)];
  }

  // Makes the block holding position `position` of seq private before seq writes there. Returns
  // the copy the caller must make when that block was shared (rows: the rows of the block before
  // `position`, the ones already written), else a copy of 0 rows. Throws (changing nothing) when
  // no block is free for the copy.
  BlockCopy prepare_write(std::int64_t seq, std::int64_t position) {
    const std::size_t s = index(seq, "prepare_write");
    std::vector<std::int64_t>& list = lists_[s];
    check(position >= 0 && position < static_cast<std::int64_t>(list.size()) * block_tokens_,
          "BlockAllocator::prepare_write", "position ", position, " of sequence ", seq, " is outside its ",
          list.size(), " blocks (reserve first)");
    std::int64_t& block = list[static_cast<std::size_t>(position / block_tokens_)];
    if (refs_[static_cast<std::size_t>(block)] == 1) return {};
    check(free_blocks() > 0, "BlockAllocator::prepare_write", "out of blocks: sequence ", seq,
          " must copy its shared block ", block, " before writing position ", position, "; none of ", num_blocks(),
          " is free");
    const BlockCopy copy{block, take(), position % block_tokens_};
    --refs_[static_cast<std::size_t>(block)];
    block = copy.to;
    return copy;
  }

  // Shrinks sequence seq to `tokens` rows (never grows): gives back its blocks past the first
  // blocks_for(tokens) (a shared one stays with its other owners). The prefill writes a prompt's
  // padded rows too, then keeps only the blocks its true length needs.
  void truncate(std::int64_t seq, std::int64_t tokens) {
    const std::size_t s = index(seq, "truncate");
    check(tokens >= 0, "BlockAllocator::truncate", "tokens must not be negative, got ", tokens);
    std::vector<std::int64_t>& list = lists_[s];
    const auto keep = static_cast<std::size_t>(std::min<std::int64_t>(blocks_for(tokens), static_cast<std::int64_t>(list.size())));
    for (std::size_t i = keep; i < list.size(); ++i)
      if (--refs_[static_cast<std::size_t>(list[i])] == 0) free_.insert(list[i]);
    list.resize(keep);
    lengths_[s] = std::min(lengths_[s], tokens);
  }

  // Gives back seq's blocks (a shared block stays with its other owners); seq is empty afterwards.
  void release(std::int64_t seq) {
    const std::size_t s = index(seq, "release");
    for (std::int64_t b : lists_[s])
      if (--refs_[static_cast<std::size_t>(b)] == 0) free_.insert(b);
    lists_[s].clear();
    lengths_[s] = 0;
  }

  // The block table [sequences, max_blocks], row-major, −1 past each sequence's blocks.
  std::vector<std::int64_t> table() const {
    std::vector<std::int64_t> t(lists_.size() * static_cast<std::size_t>(max_blocks_), -1);
    for (std::size_t s = 0; s < lists_.size(); ++s)
      std::copy(lists_[s].begin(), lists_[s].end(), t.begin() + static_cast<std::ptrdiff_t>(s * max_blocks_));
    return t;
  }

 private:
  std::size_t index(std::int64_t seq, const char* what) const {
    check(seq >= 0 && seq < num_sequences(), "BlockAllocator", what, ": sequence ", seq, " is outside [0, ",
          num_sequences(), ")");
    return static_cast<std::size_t>(seq);
  }

  std::int64_t take() {
    const std::int64_t b = *free_.begin();
    free_.erase(free_.begin());
    refs_[static_cast<std::size_t>(b)] = 1;
    return b;
  }

  std::int64_t block_tokens_, max_blocks_;
  std::vector<std::int64_t> refs_;                 // owners per block (0: free)
  std::set<std::int64_t> free_;                    // free blocks, lowest first
  std::vector<std::vector<std::int64_t>> lists_;  // per sequence: its blocks in order
  std::vector<std::int64_t> lengths_;              // per sequence: tokens reserved
};

}  // namespace kiln::infer
