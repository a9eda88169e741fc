// ImageFolder (torchvision's convention): one sub-folder per class, classes sorted by name and
// numbered from 0, files sorted; any image OpenCV reads. Subsets and splits are stratified.
#pragma once

#include <cstdint>
#include <filesystem>
#include <string>
#include <vector>

namespace datasets {

struct Sample {
  std::filesystem::path path;
  int label;
};

class ImageFolder {
 public:
  // Throws engine::Error naming the folder when it is missing, has no class folders, or a
  // class folder holds no image files.
  explicit ImageFolder(const std::filesystem::path& root);
  // The same samples, with the class list of another folder (a validation or test folder must
  // hold the training folder's classes, by name).
  ImageFolder(const std::filesystem::path& root, const std::vector<std::string>& classes);

  const std::filesystem::path& root() const { return root_; }
  const std::vector<std::string>& classes() const { return classes_; }
  const std::vector<Sample>& samples() const { return samples_; }

 private:
  void scan(const std::vector<std::string>& class_dirs);
  std::filesystem::path root_;
  std::vector<std::string> classes_;
  std::vector<Sample> samples_;
};

bool is_image_file(const std::filesystem::path& path);
// Every image file under `dir`, recursively, sorted; hidden files and folders are skipped and
// symbolic links to folders are not followed (a link loop cannot trap the scan). Throws
// engine::Error naming the folder when it cannot be listed.
std::vector<std::filesystem::path> find_images(const std::filesystem::path& dir);

// n samples drawn per class in proportion to the class sizes (each class at least one), in a
// seeded order: the `--subset N` of the data-size sweep. Returns indices into `samples`.
std::vector<size_t> stratified_subset(const std::vector<Sample>& samples, size_t n, uint64_t seed);
// Splits indices into (train, validation) with `fraction` of every class in validation.
void stratified_split(const std::vector<Sample>& samples, const std::vector<size_t>& indices,
                      double fraction, uint64_t seed, std::vector<size_t>& train,
                      std::vector<size_t>& val);

}  // namespace datasets
