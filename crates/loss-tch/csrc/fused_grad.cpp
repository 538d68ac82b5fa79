// An autograd node for losses whose gradient was computed in the forward pass.
//
// The fused kernels of the losslab crates compute a scalar loss and its gradient with respect
// to the input in one pass. This node makes that scalar part of libtorch's graph: its backward
// hands the stored gradient on, scaled by the incoming gradient only when that is not exactly 1.
// No work happens in the forward pass beyond recording the edge, and when the graph is not
// retained the stored gradient is released before the next node runs, so a leaf's
// AccumulateGrad can adopt the buffer as `.grad` without copying it.

#include <torch/csrc/autograd/function.h>
#include <torch/csrc/autograd/functions/utils.h>
#include <torch/csrc/autograd/grad_mode.h>

#include <cstdio>
#include <cstring>
#include <exception>
#include <memory>
#include <string>

namespace {

using torch::autograd::Node;
using torch::autograd::variable_list;

struct FusedLossBackward final : public Node {
  at::Tensor saved_grad;

  variable_list apply(variable_list&& grads) override {
    if (grads.empty() || !grads[0].defined()) {
      return {at::Tensor()};
    }
    if (!saved_grad.defined()) {
      throw std::runtime_error(
          "FusedLossBackward: backward through a fused loss a second time; its gradient was "
          "released after the first backward (pass retain_graph=true to keep it)");
    }
    const at::Tensor& incoming = grads[0];
    // The common case, `loss.backward()`: an incoming gradient of exactly 1 on the CPU, where
    // reading it costs nothing. Handing the buffer on unscaled avoids a full-size multiply.
    if (incoming.device().is_cpu() && incoming.numel() == 1 &&
        !torch::autograd::GradMode::is_enabled() && incoming.item<double>() == 1.0) {
      return {saved_grad};
    }
    return {saved_grad.mul(incoming)};
  }

  std::string name() const override { return "FusedLossBackward"; }

  void release_variables() override { saved_grad.reset(); }
};

void write_error(char* err, size_t err_len, const char* message) {
  if (err == nullptr || err_len == 0) return;
  std::snprintf(err, err_len, "%s", message);
}

}  // namespace

extern "C" {

// Makes `*out` (a fresh scalar with no history) the output of a FusedLossBackward node whose
// input is `*input` and whose stored gradient is `*grad` (same shape as `*input`). Nothing is
// recorded when grad mode is off or `*input` does not require grad. Returns 0 on success, 1 on
// error with a message in `err`.
int losslab_attach_fused_grad(const at::Tensor* out, const at::Tensor* input,
                              const at::Tensor* grad, char* err, size_t err_len) {
  try {
    if (!torch::autograd::compute_requires_grad(*input)) {
      return 0;
    }
    if (!grad->sizes().equals(input->sizes())) {
      write_error(err, err_len, "fused gradient: the gradient's shape differs from the input's");
      return 1;
    }
    std::shared_ptr<FusedLossBackward> node(new FusedLossBackward(),
                                            torch::autograd::deleteNode);
    node->set_next_edges(torch::autograd::collect_next_edges(*input));
    node->saved_grad = *grad;
    at::Tensor result = *out;
    torch::autograd::set_history(result, node);
    return 0;
  } catch (const std::exception& e) {
    write_error(err, err_len, e.what());
    return 1;
  } catch (...) {
    write_error(err, err_len, "fused gradient: unknown C++ exception");
    return 1;
  }
}

}  // extern "C"
