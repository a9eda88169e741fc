#include "datasets/image_folder.hpp"

#include <algorithm>
#include <cctype>
#include <map>
#include <random>
#include <set>

#include <nlohmann/json.hpp>

#include "engine/error.hpp"

namespace datasets {

namespace fs = std::filesystem;
using engine::Error;

bool is_image_file(const fs::path& path) {
  static const std::set<std::string> extensions = {
      ".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".pgm", ".ppm", ".pbm", ".pnm"};
  std::string ext = path.extension().string();
  std::transform(ext.begin(), ext.end(), ext.begin(),
                 [](unsigned char c) { return std::tolower(c); });
  return extensions.count(ext) != 0;
}

std::vector<fs::path> find_images(const fs::path& dir) {
  std::vector<fs::path> files;
  std::error_code ec;
  for (auto it =
           fs::recursive_directory_iterator(dir, fs::directory_options::skip_permission_denied, ec);
       !ec && it != fs::recursive_directory_iterator(); it.increment(ec)) {
    const std::string fname = it->path().filename().string();
    if (!fname.empty() && fname[0] == '.') {
      if (it->is_directory()) it.disable_recursion_pending();
      continue;
    }
    // Not only regular files: a broken symlink or a symlink loop named like an image is kept,
    // so that reading it fails with its reason and it is counted among the skipped files.
    std::error_code ec2;
    if (is_image_file(it->path()) && !it->is_directory(ec2)) files.push_back(it->path());
  }
  if (ec) throw Error("'" + dir.string() + "': cannot list: " + ec.message());
  std::sort(files.begin(), files.end());
  return files;
}

// Class names are stored in model files as JSON, which must be UTF-8: checked by the JSON
// writer itself, so that what passes here is exactly what a model file can hold.
static bool valid_utf8(const std::string& s) {
  try {
    (void)nlohmann::json(s).dump();
    return true;
  } catch (const nlohmann::json::type_error&) {
    return false;
  }
}

static std::vector<std::string> class_folders(const fs::path& root) {
  std::error_code ec;
  if (!fs::exists(root, ec)) throw Error("'" + root.string() + "': no such folder");
  if (!fs::is_directory(root, ec)) throw Error("'" + root.string() + "': not a folder");
  std::vector<std::string> classes;
  for (const fs::directory_entry& e : fs::directory_iterator(root, ec)) {
    const std::string name = e.path().filename().string();
    if (name.empty() || name[0] == '.' || !e.is_directory(ec)) continue;
    if (!valid_utf8(name))
      throw Error("'" + e.path().string() +
                  "': class folder name is not valid UTF-8 (model files keep class names as "
                  "UTF-8 text); rename it");
    classes.push_back(name);
  }
  if (ec) throw Error("'" + root.string() + "': cannot list: " + ec.message());
  if (classes.empty())
    throw Error("'" + root.string() + "': no class folders (expected one sub-folder per class)");
  std::sort(classes.begin(), classes.end());
  return classes;
}

ImageFolder::ImageFolder(const fs::path& root) : root_(root) {
  classes_ = class_folders(root);
  scan(classes_);
}

ImageFolder::ImageFolder(const fs::path& root, const std::vector<std::string>& classes)
    : root_(root), classes_(classes) {
  const std::vector<std::string> found = class_folders(root);
  for (const std::string& c : found)
    if (std::find(classes.begin(), classes.end(), c) == classes.end())
      throw Error("'" + (root / c).string() + "': class '" + c + "' is not one of the model's " +
                  std::to_string(classes.size()) + " classes");
  scan(found);
}

void ImageFolder::scan(const std::vector<std::string>& class_dirs) {
  for (const std::string& name : class_dirs) {
    const int label =
        static_cast<int>(std::find(classes_.begin(), classes_.end(), name) - classes_.begin());
    const fs::path dir = root_ / name;
    std::vector<fs::path> files = find_images(dir);
    if (files.empty()) throw Error("'" + dir.string() + "': class folder holds no images");
    for (fs::path& f : files) samples_.push_back({std::move(f), label});
  }
}

static std::map<int, std::vector<size_t>> by_class(const std::vector<Sample>& samples,
                                                   const std::vector<size_t>& indices) {
  std::map<int, std::vector<size_t>> groups;
  for (size_t i : indices) groups[samples[i].label].push_back(i);
  return groups;
}

std::vector<size_t> stratified_subset(const std::vector<Sample>& samples, size_t n, uint64_t seed) {
  std::vector<size_t> all(samples.size());
  for (size_t i = 0; i < all.size(); ++i) all[i] = i;
  if (n >= samples.size()) return all;
  auto groups = by_class(samples, all);
  if (n < groups.size())
    throw Error("--subset " + std::to_string(n) + " is smaller than the number of classes (" +
                std::to_string(groups.size()) + ")");
  std::mt19937_64 rng(seed);
  // Largest-remainder apportionment: exact total n, every class at least one sample.
  std::vector<std::pair<double, int>> remainders;
  std::map<int, size_t> take;
  size_t taken = 0;
  for (auto& [label, idx] : groups) {
    const double share = double(n) * double(idx.size()) / double(samples.size());
    take[label] = std::max<size_t>(1, static_cast<size_t>(share));
    taken += take[label];
    remainders.emplace_back(share - std::floor(share), label);
  }
  std::sort(remainders.rbegin(), remainders.rend());
  for (size_t i = 0; taken < n; i = (i + 1) % remainders.size())
    if (take[remainders[i].second] < groups[remainders[i].second].size())
      ++take[remainders[i].second], ++taken;
  std::vector<size_t> out;
  for (auto& [label, idx] : groups) {
    std::shuffle(idx.begin(), idx.end(), rng);
    out.insert(out.end(), idx.begin(),
               idx.begin() + static_cast<std::ptrdiff_t>(std::min(take[label], idx.size())));
  }
  std::sort(out.begin(), out.end());
  return out;
}

void stratified_split(const std::vector<Sample>& samples, const std::vector<size_t>& indices,
                      double fraction, uint64_t seed, std::vector<size_t>& train,
                      std::vector<size_t>& val) {
  if (!(fraction > 0.0 && fraction < 1.0))
    throw Error("--val-split must be in (0, 1), got " + std::to_string(fraction));
  std::mt19937_64 rng(seed ^ 0x9e3779b97f4a7c15ULL);
  train.clear();
  val.clear();
  for (auto& [label, idx] : by_class(samples, indices)) {
    std::shuffle(idx.begin(), idx.end(), rng);
    const size_t k =
        std::min(idx.size() - 1, static_cast<size_t>(std::lround(fraction * double(idx.size()))));
    val.insert(val.end(), idx.begin(), idx.begin() + static_cast<std::ptrdiff_t>(k));
    train.insert(train.end(), idx.begin() + static_cast<std::ptrdiff_t>(k), idx.end());
  }
  std::sort(train.begin(), train.end());
  std::sort(val.begin(), val.end());
}

}  // namespace datasets
