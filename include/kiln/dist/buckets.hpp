// Gradient buckets for data parallel training: parameters grouped into flat buffers of about
// `bucket_elems` elements, each reduced by one collective as soon as all of its gradients exist.
//
// Parameters are taken in reverse order: a backward pass reaches the last layers' parameters first,
// so the first bucket fills first and its communication starts while the rest of backward runs.
// A parameter larger than a bucket gets a bucket of its own; none is split. Each bucket is padded
// to a multiple of `align` elements (the number of ranks, so that a reduce-scatter gives every rank
// an equal shard); the padding stays zero.
#pragma once

#include <cstdint>
#include <vector>

#include "kiln/core/error.hpp"

namespace kiln::dist {

struct BucketEntry {
  std::size_t param = 0;    // index into the parameter list
  std::int64_t offset = 0;  // first element in the bucket's buffer
  std::int64_t numel = 0;
};

struct Bucket {
  std::vector<BucketEntry> entries;
  std::int64_t numel = 0;   // elements used
  std::int64_t padded = 0;  // buffer size: numel rounded up to a multiple of align
};

inline std::vector<Bucket> make_buckets(const std::vector<std::int64_t>& numels, std::int64_t bucket_elems,
                                        std::int64_t align) {
  check(bucket_elems >= 1 && align >= 1, "dist::make_buckets", "bucket size ", bucket_elems, " and alignment ", align,
        " must be positive");
  std::vector<Bucket> buckets;
  for (std::size_t i = numels.size(); i-- > 0;) {
    if (buckets.empty() || (buckets.back().numel > 0 && buckets.back().numel + numels[i] > bucket_elems))
      buckets.emplace_back();
    Bucket& b = buckets.back();
    b.entries.push_back({i, b.numel, numels[i]});
    b.numel += numels[i];
  }
  for (Bucket& b : buckets) b.padded = (b.numel + align - 1) / align * align;
  return buckets;
}

}  // namespace kiln::dist
