// Every kernel on every visible GPU of one process: the FP8 GEMM (whose Hopper kernel opts into
// large shared memory, which CUDA grants per device and per kernel), a reduction (whose launcher
// reads per-device multiprocessor counts) and rms_norm's backward (which opts into shared memory
// past 48 KiB at this width), each run on device d and compared with the CPU. On a machine with
// one GPU it runs on device 0 alone and says so.
#include <kiln/ops/fp8_gemm.hpp>

#include "cuda_test_util.hpp"

using namespace kiln;
using namespace kiln::testing;

TEST(MultiDeviceCuda, KernelsRunOnEveryDevice) {
  KILN_REQUIRE_GPU();
  const int devices = cuda::device_count();
  if (devices == 1) std::printf("note: one GPU visible: device 0 only (no second device to test)\n");
  manual_seed(61);
  const Tensor<float> a_host = randn<float>({256, 512});
  const Tensor<float> b_host = randn<float>({384, 512});
  const Tensor<float> x_host = randn<float>({37, 12288});
  const Tensor<float> w_host = randn<float>({12288});
  const fp8::QuantizedMatrix a_cpu = fp8::quantize(a_host, fp8::Tiling::row_1x128);
  const fp8::QuantizedMatrix b_cpu = fp8::quantize(b_host, fp8::Tiling::block_128x128);
  const Tensor<float> gemm_ref = fp8::gemm<float>(a_cpu, b_cpu);
  const Tensor<float> sum_ref = sum(x_host, {1});
  // Run the devices in reverse order, so that device 0 is not always the first to opt in.
  for (int d = devices - 1; d >= 0; --d) {
    SCOPED_TRACE(::testing::Message() << "cuda:" << d);
    const Device dev = Device::cuda(d);
    const fp8::QuantizedMatrix a = fp8::quantize(to(a_host, dev), fp8::Tiling::row_1x128);
    const fp8::QuantizedMatrix b = fp8::quantize(to(b_host, dev), fp8::Tiling::block_128x128);
    for (fp8::GemmKernel kernel : {fp8::GemmKernel::hopper, fp8::GemmKernel::simt}) {
      fp8::GemmOptions o;
      o.kernel = kernel;
      // The SIMT kernel sums the products in FP32 (1e-5); the Hopper tensor cores truncate each
      // wgmma's sum to 13 mantissa bits, below 2^-13 · (128 / 32 + 1) / 2 with promotion every 128
      // (derived in tests/kernels/test_fp8_gemm_cuda.cpp, tolerance()).
      const double tolerance = kernel == fp8::GemmKernel::simt ? 1e-5 : 0x1p-13 * (128 / 32 + 1) / 2.0;
      EXPECT_LT(relative_error(to(fp8::gemm<float>(a, b, o), Device::cpu()), gemm_ref), tolerance);
    }
    EXPECT_LT(relative_error(to(sum(to(x_host, dev), {1}), Device::cpu()), sum_ref), 1e-6);
    // rms_norm's backward at D = 12288 float uses 48 KiB of dynamic shared memory (the opt-in).
    Tensor<float> x = to(x_host, dev).requires_grad_(), w = to(w_host, dev).requires_grad_();
    sum(rms_norm(x, w)).backward();
    Tensor<float> xc = clone(x_host).requires_grad_(), wc = clone(w_host).requires_grad_();
    sum(rms_norm(xc, wc)).backward();
    EXPECT_LT(relative_error(to(x.grad(), Device::cpu()), xc.grad()), 1e-5);
    EXPECT_LT(relative_error(to(w.grad(), Device::cpu()), wc.grad()), 1e-5);
  }
}
