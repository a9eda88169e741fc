// ParameterStore, AdamW and SGD against hand-computed steps, gradient clipping, the schedule,
// and small networks built from the layers that must overfit a fixed batch.
#include <cmath>
#include <numbers>

#include <doctest/doctest.h>

#include "check.hpp"
#include "engine/batch_norm.hpp"
#include "engine/conv2d.hpp"
#include "engine/cross_entropy.hpp"
#include "engine/eltwise.hpp"
#include "engine/linear.hpp"
#include "engine/optim.hpp"
#include "engine/pooling.hpp"
#include "engine/schedule.hpp"

using namespace engine;

TEST_CASE("ParameterStore: aligned views into flat buffers, flags, errors") {
  Context ctx(1);
  ParameterStore store;
  Parameter& w = store.add("fc.weight", {3, 5});
  Parameter& b = store.add("fc.bias", {3}, false);
  Parameter& rm = store.add_buffer("bn.running_mean", {3});
  CHECK_THROWS_WITH_AS(store.add("fc.bias", {3}), "ParameterStore: duplicate parameter 'fc.bias'",
                       Error);
  store.allocate(ctx.eng);
  CHECK_THROWS_AS(store.add("late", {1}), Error);
  CHECK(w.decay);
  CHECK_FALSE(b.decay);
  CHECK_FALSE(rm.trainable);
  CHECK_FALSE(rm.decay);
  CHECK(store.num_trainable() == 18);
  for (const Parameter& p : store.parameters()) {
    CHECK(p.offset % 16 == 0);
    CHECK(p.value.data() == store.values() + p.offset);
    CHECK(p.grad.data() == store.grads() + p.offset);
    CHECK(reinterpret_cast<uintptr_t>(p.value.data()) % 64 == 0);
  }
  CHECK(&store["fc.bias"] == &b);
  CHECK_THROWS_WITH_AS(store["nope"], "ParameterStore: no parameter named 'nope'", Error);
  b.grad[1] = 3.0f;
  store.zero_grad();
  CHECK(b.grad[1] == 0.0f);
}

TEST_CASE("AdamW: hand-computed steps, decoupled decay only where the mask says") {
  Context ctx(1);
  ParameterStore store;
  Parameter& w = store.add("w", {2});
  Parameter& b = store.add("b", {1}, false);
  Parameter& buf = store.add_buffer("running", {1});
  store.allocate(ctx.eng);
  w.value[0] = 1.0f, w.value[1] = -2.0f, b.value[0] = 0.5f, buf.value[0] = 7.0f;
  w.grad[0] = 0.1f, w.grad[1] = -0.3f, b.grad[0] = 0.2f, buf.grad[0] = 100.0f;
  AdamW adam;
  adam.weight_decay = 0.05f;
  adam.update(store, 0.1f);
  // Step 1: m̂ = g and v̂ = g², so each parameter moves by lr·sign(g) after decay.
  CHECK(w.value[0] == doctest::Approx(1.0 * (1 - 0.1 * 0.05) - 0.1).epsilon(1e-6));
  CHECK(w.value[1] == doctest::Approx(-2.0 * (1 - 0.1 * 0.05) + 0.1).epsilon(1e-6));
  CHECK(b.value[0] == doctest::Approx(0.5 - 0.1).epsilon(1e-6));
  CHECK(buf.value[0] == 7.0f);  // buffers are never optimized

  // Step 2 with new gradients, the update written out.
  const double g2 = 0.5, lr = 0.01;
  w.grad[0] = float(g2);
  adam.update(store, float(lr));
  const double m = 0.9 * (0.1 * 0.1) + 0.1 * g2, v = 0.999 * (0.001 * 0.01) + 0.001 * g2 * g2;
  const double mhat = m / (1 - 0.9 * 0.9), vhat = v / (1 - 0.999 * 0.999);
  const double w1 = 1.0 * (1 - 0.1 * 0.05) - 0.1;
  CHECK(w.value[0] ==
        doctest::Approx(w1 * (1 - lr * 0.05) - lr * mhat / (std::sqrt(vhat) + 1e-8)).epsilon(1e-6));
  CHECK(adam.step == 2);
}

TEST_CASE("ModelEma: warmed-up decay, hand-computed averages of weights and buffers, swap") {
  Context ctx(1);
  ParameterStore store;
  Parameter& w = store.add("w", {2});
  Parameter& buf = store.add_buffer("running", {1});
  store.allocate(ctx.eng);
  w.value[0] = 1.0f, w.value[1] = -2.0f, buf.value[0] = 4.0f;
  ModelEma ema(ctx.eng, store, 0.9f);
  CHECK(ema.decay_at(1) == doctest::Approx(2.0 / 11));  // (1 + t) / (10 + t) below the decay
  CHECK(ema.decay_at(70) == doctest::Approx(71.0 / 80));
  CHECK(ema.decay_at(1000) == 0.9f);  // then the decay itself
  // Step 1 moves the weights; the average follows by 1 - 2/11 of the way.
  w.value[0] = 3.0f, buf.value[0] = 6.0f;
  ema.update(store, 1);
  const double d1 = 2.0 / 11, e0 = d1 * 1.0 + (1 - d1) * 3.0, eb = d1 * 4.0 + (1 - d1) * 6.0;
  CHECK(ema.shadow[store["w"].offset] == doctest::Approx(e0));
  CHECK(ema.shadow[store["w"].offset + 1] == doctest::Approx(-2.0));
  CHECK(ema.shadow[store["running"].offset] == doctest::Approx(eb));  // buffers too (timm)
  w.value[0] = 5.0f;
  ema.update(store, 2000);
  const double e1 = 0.9 * e0 + 0.1 * 5.0;
  CHECK(ema.shadow[store["w"].offset] == doctest::Approx(e1));
  // swap: the store holds the average, and a second swap gives the weights back.
  const uint64_t version = store.version();
  ema.swap(store);
  CHECK(w.value[0] == doctest::Approx(e1));
  CHECK(buf.value[0] == doctest::Approx(0.9 * eb + 0.1 * 6.0));
  CHECK(store.version() != version);  // packed copies (VitInference) refresh
  ema.swap(store);
  CHECK(w.value[0] == 5.0f);
  CHECK(buf.value[0] == 6.0f);
  CHECK_THROWS_WITH_AS(ModelEma(ctx.eng, store, 1.0f),
                       "--model-ema-decay must be in [0, 1), got 1.000000", Error);
}

TEST_CASE("SGD with momentum: hand-computed steps, coupled weight decay") {
  Context ctx(1);
  ParameterStore store;
  Parameter& w = store.add("w", {1});
  Parameter& b = store.add("b", {1}, false);
  store.allocate(ctx.eng);
  w.value[0] = 1.0f, b.value[0] = 1.0f;
  w.grad[0] = 0.5f, b.grad[0] = 0.5f;
  Sgd sgd;
  sgd.weight_decay = 0.1f;
  sgd.update(store, 0.1f);
  CHECK(w.value[0] == doctest::Approx(1.0 - 0.1 * (0.5 + 0.1)));  // buf = g + wd·w = 0.6
  CHECK(b.value[0] == doctest::Approx(1.0 - 0.1 * 0.5));
  sgd.update(store, 0.1f);
  const double w1 = 1.0 - 0.06, buf = 0.9 * 0.6 + (0.5 + 0.1 * w1);
  CHECK(w.value[0] == doctest::Approx(w1 - 0.1 * buf));
  CHECK(b.value[0] == doctest::Approx(0.95 - 0.1 * (0.9 * 0.5 + 0.5)));
}

TEST_CASE("clip_grad_norm: global L2 norm over trainable gradients") {
  Context ctx(1);
  ParameterStore store;
  Parameter& a = store.add("a", {1});
  Parameter& b = store.add("b", {1});
  Parameter& buf = store.add_buffer("buf", {1});
  store.allocate(ctx.eng);
  a.grad[0] = 3.0f, b.grad[0] = 4.0f, buf.grad[0] = 12.0f;
  CHECK(clip_grad_norm(store, 0.0f) == doctest::Approx(5.0));  // measures only
  CHECK(a.grad[0] == 3.0f);
  CHECK(clip_grad_norm(store, 10.0f) == doctest::Approx(5.0));  // under the limit: untouched
  CHECK(a.grad[0] == 3.0f);
  CHECK(clip_grad_norm(store, 1.0f) == doctest::Approx(5.0));
  CHECK(a.grad[0] == doctest::Approx(0.6).epsilon(1e-5));
  CHECK(b.grad[0] == doctest::Approx(0.8).epsilon(1e-5));
}

TEST_CASE("WarmupCosineSchedule values at chosen steps") {
  WarmupCosineSchedule s{.base_lr = 1e-3f,
                         .min_lr = 1e-5f,
                         .warmup_lr = 1e-6f,
                         .warmup_steps = 10,
                         .total_steps = 110};
  CHECK(s.at(0) == doctest::Approx(1e-6));
  CHECK(s.at(5) == doctest::Approx(1e-6 + (1e-3 - 1e-6) * 0.5));
  CHECK(s.at(10) == doctest::Approx(1e-3));
  CHECK(s.at(60) == doctest::Approx((1e-3 + 1e-5) / 2));
  CHECK(s.at(35) ==
        doctest::Approx(1e-5 + 0.5 * (1e-3 - 1e-5) * (1 + std::cos(std::numbers::pi / 4))));
  CHECK(s.at(110) == doctest::Approx(1e-5));
  CHECK(s.at(500) == doctest::Approx(1e-5));
  WarmupCosineSchedule no_warmup{
      .base_lr = 0.1f, .min_lr = 0.0f, .warmup_lr = 0.0f, .warmup_steps = 0, .total_steps = 4};
  CHECK(no_warmup.at(0) == doctest::Approx(0.1));
  CHECK(no_warmup.at(2) == doctest::Approx(0.05));
}

TEST_CASE("a two-layer MLP overfits a fixed batch with AdamW") {
  Context ctx(3);
  std::mt19937_64 rng(131);
  ParameterStore store;
  Linear fc1(store, "fc1", 16, 32), fc2(store, "fc2", 32, 4);
  Gelu act;
  store.allocate(ctx.eng);
  fc1.reset_parameters(ctx);
  fc2.reset_parameters(ctx);
  SoftmaxCrossEntropy ce;
  AdamW adam;
  Tensor x = check::random_tensor(ctx, {16, 16}, rng);
  std::vector<int> labels(16);
  for (int i = 0; i < 16; ++i) labels[i] = int(rng() % 4);
  float first = 0, last = 0;
  for (int step = 0; step < 200; ++step) {
    const float loss =
        ce.forward(ctx, fc2.forward(ctx, act.forward(ctx, fc1.forward(ctx, x))), labels);
    if (step == 0) first = loss;
    last = loss;
    fc1.backward(ctx, act.backward(ctx, fc2.backward(ctx, ce.backward(ctx))));
    adam.update(store, 1e-2f);
  }
  INFO("loss " << first << " -> " << last);
  CHECK(last < 0.05f * first);
}

TEST_CASE("a small CNN (conv, batch norm, relu, pooling, linear) overfits a fixed batch with SGD") {
  Context ctx(4);
  std::mt19937_64 rng(132);
  ParameterStore store;
  Conv2d conv(store, "conv", 1, 8, 3, 1, 1, false);
  BatchNorm2d bn(store, "bn", 8);
  Relu relu;
  MaxPool2d pool(2, 2);
  GlobalAvgPool2d gap;
  Linear head(store, "head", 8, 3);
  store.allocate(ctx.eng);
  conv.reset_parameters(ctx);
  bn.reset_parameters();
  head.reset_parameters(ctx);
  SoftmaxCrossEntropy ce;
  Sgd sgd;
  Tensor x = check::random_tensor(ctx, {12, 1, 8, 8}, rng);
  std::vector<int> labels(12);
  for (int i = 0; i < 12; ++i) labels[i] = i % 3;
  float first = 0, last = 0;
  for (int step = 0; step < 300; ++step) {
    const Tensor& pooled = gap.forward(
        ctx, pool.forward(ctx, relu.forward(ctx, bn.forward(ctx, conv.forward(ctx, x)))));
    const Tensor features = pooled.reshaped({12, 8});
    const float loss = ce.forward(ctx, head.forward(ctx, features), labels);
    if (step == 0) first = loss;
    last = loss;
    const Tensor d_features = head.backward(ctx, ce.backward(ctx)).reshaped({12, 8, 1, 1});
    conv.backward(
        ctx,
        bn.backward(ctx, relu.backward(ctx, pool.backward(ctx, gap.backward(ctx, d_features)))));
    sgd.update(store, 0.1f);
  }
  INFO("loss " << first << " -> " << last);
  CHECK(last < 0.05f * first);
}

TEST_CASE("lr_scale: AdamW and SGD step each parameter at lr times its scale") {
  Context ctx(7);
  for (const bool adamw : {true, false}) {
    CAPTURE(adamw);
    // The same two steps on a store whose second parameter has lr_scale 0.25, and on one
    // trained at lr / 4 throughout: that parameter must end equal, the other as at full lr.
    ParameterStore scaled, quarter, full;
    for (ParameterStore* s : {&scaled, &quarter, &full}) {
      s->add("a", {3});
      s->add("b", {2, 2});
      s->allocate(ctx.eng);
      for (int64_t i = 0; i < s->size(); ++i) s->values()[i] = 0.1f * float(i % 7) - 0.3f;
    }
    scaled["b"].lr_scale = 0.25f;
    AdamW opt_s, opt_q, opt_f;
    Sgd sgd_s, sgd_q, sgd_f;
    for (AdamW* o : {&opt_s, &opt_q, &opt_f}) o->weight_decay = 0.1f;
    for (Sgd* o : {&sgd_s, &sgd_q, &sgd_f}) o->weight_decay = 0.1f;
    for (int step = 0; step < 2; ++step) {
      for (ParameterStore* s : {&scaled, &quarter, &full})
        for (int64_t i = 0; i < s->size(); ++i)
          s->grads()[i] = 0.05f * float((i + step) % 5) - 0.1f;
      if (adamw) {
        opt_s.update(scaled, 0.01f), opt_q.update(quarter, 0.0025f), opt_f.update(full, 0.01f);
      } else {
        sgd_s.update(scaled, 0.01f), sgd_q.update(quarter, 0.0025f), sgd_f.update(full, 0.01f);
      }
    }
    for (int64_t i = 0; i < 4; ++i)
      CHECK(scaled["b"].value[i] == doctest::Approx(quarter["b"].value[i]).epsilon(1e-6));
    for (int64_t i = 0; i < 3; ++i) CHECK(scaled["a"].value[i] == full["a"].value[i]);
    CHECK(scaled["b"].value[0] != full["b"].value[0]);
  }
}
