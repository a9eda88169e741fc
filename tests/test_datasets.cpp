// The data path: ImageFolder order, stratified subsets, patch order, loader determinism and
// the soft targets of mixup and cutmix, on the committed stripes folder.
#include <doctest/doctest.h>

#include <numeric>

#include "check.hpp"
#include "datasets/loader.hpp"
#include "engine/error.hpp"

using namespace datasets;

namespace {

const std::string kStripes = std::string(VIT_FIXTURES) + "/stripes";

Preprocess stripes_preprocess() {
  Preprocess p;
  p.img_size = 16, p.in_chans = 1, p.patch_size = 4, p.mean = {0.5f}, p.std = {0.25f};
  return p;
}

std::vector<size_t> all_of(const ImageFolder& f) {
  std::vector<size_t> v(f.samples().size());
  std::iota(v.begin(), v.end(), size_t{0});
  return v;
}

}  // namespace

TEST_CASE("ImageFolder: classes sorted, files sorted, labels by class order") {
  const ImageFolder f(kStripes + "/train");
  CHECK(f.classes() == std::vector<std::string>{"diagonal", "horizontal", "vertical"});
  REQUIRE(f.samples().size() == 120);
  CHECK(f.samples()[0].label == 0);
  CHECK(f.samples()[40].label == 1);
  CHECK(f.samples()[0].path.filename() == "000.png");
  CHECK(f.samples()[1].path.filename() == "001.png");
  CHECK_THROWS_WITH_AS(ImageFolder(kStripes + "/train", {"diagonal"}),
                       doctest::Contains("is not one of the model's 1 classes"), engine::Error);
}

TEST_CASE("stratified subset and split keep the class proportions") {
  const ImageFolder f(kStripes + "/train");
  const auto subset = stratified_subset(f.samples(), 30, 5);
  REQUIRE(subset.size() == 30);
  int per_class[3] = {};
  for (size_t i : subset) ++per_class[f.samples()[i].label];
  CHECK(per_class[0] == 10);
  CHECK(per_class[1] == 10);
  CHECK(per_class[2] == 10);
  CHECK(stratified_subset(f.samples(), 30, 5) == subset);  // a seed fixes it
  std::vector<size_t> train, val;
  stratified_split(f.samples(), all_of(f), 0.25, 1, train, val);
  CHECK(train.size() == 90);
  CHECK(val.size() == 30);
  CHECK_THROWS_AS(stratified_subset(f.samples(), 2, 0), engine::Error);
}

TEST_CASE("patches are cut in (channel, row, column) order from the normalized image") {
  Preprocess p = stripes_preprocess();
  const cv::Mat img = load_image(kStripes + "/val/vertical/000.png", 1);
  std::vector<float> patches(p.sample_size());
  to_model_input(img, p, patches.data());
  // Patch (1, 2) of the 4x4 grid, its row 3, column 1: pixel (y 7, x 9).
  const int64_t patch = 1 * 4 + 2, P = 4;
  const float want = (img.at<unsigned char>(7, 9) / 255.0f - 0.5f) / 0.25f;
  CHECK(patches[patch * P * P + 3 * P + 1] == doctest::Approx(want));
}

TEST_CASE("DataLoader: the same seed gives the same batches, whatever the worker count") {
  engine::Context ctx(1);
  const ImageFolder f(kStripes + "/train");
  SourceOptions so;
  so.training = true;
  const ImageSource source(f, all_of(f), stripes_preprocess(), so);
  auto batches = [&](int workers, uint64_t seed) {
    LoaderOptions o;
    o.batch_size = 32, o.shuffle = true, o.augment = true, o.seed = seed, o.workers = workers;
    o.augmentation.crop = "pad", o.augmentation.pad = 2, o.augmentation.hflip = 0.5;
    o.augmentation.random_erase = 0.5;
    DataLoader loader(ctx.eng, source, o);
    std::vector<std::vector<float>> out;
    loader.start_epoch(3);
    while (auto b = loader.next()) out.push_back(check::copy_of(b->input));
    return out;
  };
  const auto one = batches(1, 9);
  REQUIRE(one.size() == 4);  // 120 images, batch 32, the last partial
  CHECK(batches(3, 9) == one);
  CHECK(batches(1, 10) != one);
}

TEST_CASE("crop auto: no crop for a short run, the pad crop for a long one") {
  Augment a;
  a.crop = "auto", a.pad = 4, a.hflip = 0.5;
  const int64_t first = kAutoPadFirstEpoch;
  CHECK(a.for_run(1).crop == "none");
  CHECK(a.for_run(first - 1).crop == "none");
  CHECK(a.for_run(first).crop == "pad");
  CHECK(a.for_run(first).pad == kAutoPad);
  CHECK(a.for_run(10 * first).pad == kAutoPad);
  CHECK(a.for_run(first).hflip == 0.5);  // the rest of the recipe as it was
  a.pad = 1;                             // --pad is the most it pads
  CHECK(a.for_run(first).pad == 1);
  a.pad = 0;
  CHECK(a.for_run(first).crop == "none");
  for (const char* crop : {"none", "pad", "rrc"}) {  // only auto depends on the run
    Augment b;
    b.crop = crop, b.pad = 2;
    CHECK(b.for_run(0).crop == crop);
    CHECK(b.for_run(0).pad == 2);
  }
  engine::Context ctx(1);
  const ImageFolder f(kStripes + "/train");
  const ImageSource source(f, all_of(f), stripes_preprocess(), SourceOptions{});
  LoaderOptions o;
  o.augment = true, o.augmentation.crop = "auto";
  CHECK_THROWS_WITH(DataLoader(ctx.eng, source, o),
                    doctest::Contains("crop 'auto' depends on the run"));
}

TEST_CASE("DataLoader: mixup and cutmix give soft targets that sum to one") {
  engine::Context ctx(1);
  const ImageFolder f(kStripes + "/train");
  const ImageSource source(f, all_of(f), stripes_preprocess(), SourceOptions{});
  for (auto [mixup, cutmix] : {std::pair{0.8, 0.0}, {0.0, 1.0}, {0.8, 1.0}}) {
    CAPTURE(mixup);
    CAPTURE(cutmix);
    LoaderOptions o;
    o.batch_size = 16, o.shuffle = true, o.augment = true, o.num_classes = 3, o.seed = 4;
    o.augmentation.mixup_alpha = mixup, o.augmentation.cutmix_alpha = cutmix;
    DataLoader loader(ctx.eng, source, o);
    loader.start_epoch(0);
    int mixed = 0;
    while (auto b = loader.next()) {
      if (b->targets.empty()) continue;
      ++mixed;
      const int64_t B = b->targets.dim(0);
      for (int64_t i = 0; i < B; ++i) {
        float sum = 0;
        for (int64_t k = 0; k < 3; ++k) sum += b->targets[i * 3 + k];
        CHECK(sum == doctest::Approx(1.0));
        CHECK(b->targets[i * 3 + b->labels[i]] > 0.0f);  // its own label keeps a share
      }
    }
    CHECK(mixed == loader.num_batches());  // mix_prob 1: every batch
  }
}

TEST_CASE("eval transform: timm's crop modes center, squash and border, by hand") {
  // A 4 × 8 grayscale image whose pixel (r, c) is 10·c + r.
  cv::Mat image(4, 8, CV_8UC1);
  for (int r = 0; r < 4; ++r)
    for (int c = 0; c < 8; ++c) image.at<uint8_t>(r, c) = uint8_t(10 * c + r);
  datasets::Preprocess p;
  p.img_size = 4, p.in_chans = 1, p.patch_size = 2, p.mean = {0.2f}, p.std = {1.0f};
  p.validate();
  // center: the shorter side is already 4, so the centre columns 2..5 are taken as they are.
  cv::Mat out = datasets::eval_transform(image, p);
  REQUIRE(out.rows == 4);
  REQUIRE(out.cols == 4);
  for (int r = 0; r < 4; ++r)
    for (int c = 0; c < 4; ++c) CHECK(out.at<uint8_t>(r, c) == 10 * (c + 2) + r);
  // squash: all 8 columns squeezed into 4, so the first and last columns of the image survive
  // averaged in pairs (area shrinking): (0, 10) -> 5, (60, 70) -> 65 in row 0.
  p.crop_mode = "squash";
  out = datasets::eval_transform(image, p);
  CHECK(out.at<uint8_t>(0, 0) == 5);
  CHECK(out.at<uint8_t>(0, 3) == 65);
  // border: the longer side to 4 (the image becomes 2 × 4), padded above and below with the
  // mean colour, round(255 · 0.2) = 51.
  p.crop_mode = "border";
  out = datasets::eval_transform(image, p);
  for (int c = 0; c < 4; ++c) {
    CHECK(out.at<uint8_t>(0, c) == 51);
    CHECK(out.at<uint8_t>(3, c) == 51);
    CHECK(out.at<uint8_t>(1, c) != 51);
  }
  p.crop_mode = "letterbox";
  CHECK_THROWS_WITH_AS(
      p.validate(), doctest::Contains("crop_mode must be center, squash or border"), engine::Error);
  p.crop_mode = "center", p.interpolation = "lanczos";
  CHECK_THROWS_AS(p.validate(), engine::Error);
  // Written only when not our default, and read back.
  p.interpolation = "bicubic", p.crop_mode = "squash";
  const nlohmann::json j = p;
  CHECK(j.at("interpolation") == "bicubic");
  const datasets::Preprocess back = j.get<datasets::Preprocess>();
  CHECK(back.crop_mode == "squash");
  CHECK_FALSE(nlohmann::json(datasets::Preprocess{}).contains("crop_mode"));
}
