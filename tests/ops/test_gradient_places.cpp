// Where a backward puts the gradients of inputs that are views of wider tensors
// (ops/gradient_places.hpp): metadata only (offsets, strides, storages), so it runs on the CPU; the
// GPU backwards that use it (swiglu, rms_norm, the fused attention) are checked against the CPU in
// test_elementwise_cuda, test_rms_norm_cuda and test_attention_cuda.
#include <gtest/gtest.h>

#include "kiln/kiln.hpp"

using namespace kiln;
using detail::gradients_where_inputs_lay;
using detail::plan_gradient_places;

namespace {

bool placed(const std::vector<Tensor<float>>& inputs, std::size_t i) {
  return plan_gradient_places(inputs).places[i].storage >= 0;
}

}  // namespace

// A SwiGLU MLP's gate and up, the halves of one [rows, 2I] projection: one fresh storage of the
// projection's size, each gradient at its input's offset and strides (so the split that made the
// halves settles with no copy).
TEST(GradientPlaces, HalvesOfOneProjectionShareOneStorage) {
  const std::int64_t R = 7, I = 5;
  const Tensor<float> gate_up = zeros<float>({R, 2 * I});
  const Tensor<float> gate = narrow(gate_up, 1, 0, I), up = narrow(gate_up, 1, I, I);
  const detail::GradientPlan plan = plan_gradient_places(std::vector<Tensor<float>>{up, gate});  // any order
  ASSERT_EQ(plan.storage_bytes.size(), 1u);
  EXPECT_EQ(plan.storage_bytes[0], gate_up.storage()->nbytes());
  const std::vector<Tensor<float>> grads = gradients_where_inputs_lay<float>({gate, up});
  ASSERT_EQ(grads.size(), 2u);
  EXPECT_EQ(grads[0].storage(), grads[1].storage());
  EXPECT_NE(grads[0].storage(), gate_up.storage());
  for (std::size_t i = 0; i < 2; ++i) {
    const Tensor<float>& input = i == 0 ? gate : up;
    EXPECT_EQ(grads[i].shape(), input.shape());
    EXPECT_EQ(grads[i].strides(), input.strides());
    EXPECT_EQ(grads[i].offset(), input.offset());
  }
}

// MLA's q_a and latent: [B, S, width] column ranges of one stacked projection, one at a time (each
// normalised by its own RMSNorm), and a transposed [B, H, S, d] head view.
TEST(GradientPlaces, SlicesOfWiderRowsAnyRank) {
  const Tensor<float> stacked = zeros<float>({2, 3, 40});
  EXPECT_TRUE(placed({narrow(stacked, 2, 0, 24)}, 0));
  EXPECT_TRUE(placed({narrow(stacked, 2, 24, 16)}, 0));
  const Tensor<float> heads = transpose(narrow(zeros<float>({2, 3, 4, 12}), 3, 4, 8), 1, 2);
  const std::vector<Tensor<float>> grads = gradients_where_inputs_lay<float>({heads});
  EXPECT_EQ(grads[0].strides(), heads.strides());
  EXPECT_EQ(grads[0].offset(), 4);
}

// Contiguous gradients of their own where the place cannot be reused.
TEST(GradientPlaces, ContiguousWhereThePlaceCannotBeReused) {
  const Tensor<float> wide = zeros<float>({6, 10});
  const Tensor<float> left = narrow(wide, 1, 0, 4);
  // The same tensor twice (swiglu(x, x)): one place, two gradients.
  EXPECT_FALSE(placed({left, left}, 0));
  EXPECT_FALSE(placed({left, left}, 1));
  // Overlapping column ranges.
  EXPECT_FALSE(placed({left, narrow(wide, 1, 2, 4)}, 0));
  // Different row strides or shapes on one storage.
  EXPECT_FALSE(placed({left, narrow(reshape(wide, {3, 20}), 1, 10, 4)}, 0));
  // An expanded view (stride 0): one gradient value per broadcast element.
  EXPECT_FALSE(placed({expand(zeros<float>({1, 4}), {6, 4})}, 0));
  // A last dim that is not contiguous.
  EXPECT_FALSE(placed({transpose(wide, 0, 1)}, 0));
  EXPECT_FALSE(placed({slice(wide, 1, 0, 10, 2)}, 0));
  // A view into a storage more than 8 times its size; at 8 times, placed.
  EXPECT_FALSE(placed({narrow(zeros<float>({6, 4 * 9}), 1, 0, 4)}, 0));
  EXPECT_TRUE(placed({narrow(zeros<float>({6, 4 * 8}), 1, 0, 4)}, 0));
  // Each gradient still has its input's shape.
  const std::vector<Tensor<float>> grads = gradients_where_inputs_lay<float>({left, left});
  EXPECT_TRUE(grads[0].is_contiguous());
  EXPECT_NE(grads[0].storage(), grads[1].storage());
  EXPECT_EQ(grads[1].shape(), left.shape());
}
