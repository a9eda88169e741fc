// Files written whole or not at all: the bytes go to a temporary file beside the target, are
// synced, and renamed over it. A full disk or a killed process leaves any file already there
// intact and no half file behind. Model files, checkpoints and pictures all go through here.
#pragma once

#include <cstddef>
#include <filesystem>
#include <vector>

namespace engine {

struct Bytes {
  const void* data;
  size_t size;
};

// Writes `pieces`, in order, as the file `path`. Errors (engine::Error) name the file and the
// system's reason.
void write_file_atomic(const std::filesystem::path& path, const std::vector<Bytes>& pieces);

}  // namespace engine
