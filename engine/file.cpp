#include "engine/file.hpp"

#include <fcntl.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <string>

#include "engine/error.hpp"

namespace engine {

namespace {

std::string errno_text() {
  return std::strerror(errno);
}

void write_all(int fd, const void* data, size_t n, const std::string& where) {
  const char* p = static_cast<const char*>(data);
  while (n > 0) {
    const ssize_t w = ::write(fd, p, n);
    if (w < 0 && errno == EINTR) continue;
    if (w < 0) throw Error("cannot write '" + where + "': " + errno_text());
    p += w;
    n -= static_cast<size_t>(w);
  }
}

}  // namespace

void write_file_atomic(const std::filesystem::path& path, const std::vector<Bytes>& pieces) {
  const std::string where = path.string();
  const std::filesystem::path tmp = path.string() + ".tmp" + std::to_string(::getpid());
  const int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd < 0) throw Error("cannot write '" + where + "': " + errno_text());
  try {
    for (const Bytes& b : pieces) write_all(fd, b.data, b.size, where);
    if (::fsync(fd) != 0) throw Error("cannot write '" + where + "': " + errno_text());
  } catch (...) {
    ::close(fd);
    ::unlink(tmp.c_str());
    throw;
  }
  if (::close(fd) != 0) {
    ::unlink(tmp.c_str());
    throw Error("cannot write '" + where + "': " + errno_text());
  }
  if (::rename(tmp.c_str(), path.c_str()) != 0) {
    const std::string why = errno_text();
    ::unlink(tmp.c_str());
    throw Error("cannot write '" + where + "': " + why);
  }
  // The rename itself reaches the disk only with its folder: after a power cut the name could
  // otherwise still point at the old file (harmless) or, on some file systems, at nothing.
  const std::filesystem::path dir = path.has_parent_path() ? path.parent_path() : ".";
  const int dfd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (dfd >= 0) {
    ::fsync(dfd);  // best effort: some file systems refuse fsync on a folder
    ::close(dfd);
  }
}

}  // namespace engine
