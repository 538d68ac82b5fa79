// An autograd node for losses whose gradient was computed in the forward pass.
//
// The fused kernels of the losslab crates compute a scalar loss and its gradient with respect
// to the input in one pass. This node makes that scalar part of libtorch's graph: its backward
// hands the stored gradient on, scaled by the incoming gradient only when that is not exactly 1.
// No work happens in the forward pass beyond recording the edge, and when the graph is not
// retained the stored gradient is released before the next node runs, so a leaf's
// AccumulateGrad can adopt the buffer as `.grad` without copying it. With a retained graph the
// caller gets a copy, so that no two backward calls share one buffer.
//
// The stored gradient is a constant to autograd: the node has no second derivative with respect
// to its input. Under `create_graph` its result stays differentiable with respect to the
// incoming gradient (exactly), and differentiating it with respect to the input raises an error
// instead of silently leaving the loss's curvature out.

#include <torch/csrc/autograd/function.h>
#include <torch/csrc/autograd/functions/utils.h>
#include <torch/csrc/autograd/grad_mode.h>
#include <torch/csrc/autograd/graph_task.h>

#include <cstdio>
#include <cstring>
#include <exception>
#include <memory>
#include <string>

namespace {

using torch::autograd::Node;
using torch::autograd::variable_list;

const char* const kNoSecondDerivative =
    "FusedLossBackward: a fused loss has no second derivative with respect to its input (its "
    "gradient was computed in closed form in the forward pass); build the loss with "
    "with_fused(false) to differentiate its gradient (gradient penalties, Hessian-vector "
    "products)";

// Where a gradient computed under `create_graph` leads back to the fused loss's input: running
// it means a second derivative was asked for, which the fused node cannot give.
struct FusedLossNoSecondDerivative final : public Node {
  variable_list apply(variable_list&& /*grads*/) override {
    throw std::runtime_error(kNoSecondDerivative);
  }

  std::string name() const override { return "FusedLossNoSecondDerivative"; }
};

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
    if (torch::autograd::GradMode::is_enabled()) {
      // `create_graph`: the product is differentiable in `incoming`; a zero with a node that
      // raises on the way back to the input stands for the missing second derivative. Only
      // derivatives that reach the input run that node.
      at::Tensor scaled = saved_grad.mul(incoming);
      std::shared_ptr<FusedLossNoSecondDerivative> guard(new FusedLossNoSecondDerivative(),
                                                         torch::autograd::deleteNode);
      guard->set_next_edges(torch::autograd::edge_list(next_edges()));
      at::Tensor zero = at::zeros({}, saved_grad.options());
      torch::autograd::set_history(zero, guard);
      return {scaled.add(zero)};
    }
    // The common case, `loss.backward()`: an incoming gradient of exactly 1 on the CPU, where
    // reading it costs nothing. Handing the buffer on unscaled avoids a full-size multiply; the
    // graph then releases it, so the next node owns it alone. A retained graph keeps it for the
    // next backward, so this one gets a copy.
    if (incoming.device().is_cpu() && incoming.numel() == 1 && incoming.item<double>() == 1.0) {
      if (torch::autograd::get_current_graph_task_keep_graph()) {
        return {saved_grad.clone()};
      }
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
