// Hostile image folders: every odd file is either read correctly or skipped with its reason,
// and a small file claiming gigapixels is refused before it is decoded.
#include <grp.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <doctest/doctest.h>

#include <array>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <numeric>
#include <opencv2/imgcodecs.hpp>

#include "datasets/loader.hpp"
#include "engine/error.hpp"

using namespace datasets;
namespace fs = std::filesystem;

namespace {

struct TempDir {
  fs::path path;
  TempDir() {
    path = fs::temp_directory_path() /
           ("vit_hostile_" + std::to_string(::getpid()) + "_" + std::to_string(std::rand()));
    fs::create_directories(path);
  }
  ~TempDir() { fs::remove_all(path); }
};

std::vector<unsigned char> encode(const cv::Mat& m, const char* ext = ".png") {
  std::vector<unsigned char> bytes;
  REQUIRE(cv::imencode(ext, m, bytes));
  return bytes;
}

void write_file(const fs::path& p, const std::vector<unsigned char>& bytes) {
  fs::create_directories(p.parent_path());
  std::ofstream(p, std::ios::binary)
      .write(reinterpret_cast<const char*>(bytes.data()), std::streamsize(bytes.size()));
}

void append(std::vector<unsigned char>& b, std::initializer_list<int> bytes) {
  for (int c : bytes) b.push_back(static_cast<unsigned char>(c));
}

// A PNG whose header says w × h: signature, IHDR, an empty IDAT and IEND (CRCs unchecked here).
std::vector<unsigned char> png_claiming(uint32_t w, uint32_t h) {
  std::vector<unsigned char> b;
  append(b, {0x89, 'P', 'N', 'G', '\r', '\n', 0x1a, '\n', 0, 0, 0, 13, 'I', 'H', 'D', 'R'});
  for (uint32_t v : {w, h})
    for (int s = 24; s >= 0; s -= 8) b.push_back(static_cast<unsigned char>(v >> s));
  append(b, {8, 0, 0, 0, 0});  // 8-bit gray
  append(b, {0, 0, 0, 0});     // CRC
  append(b, {0, 0, 0, 0, 'I', 'D', 'A', 'T', 0, 0, 0, 0});
  append(b, {0, 0, 0, 0, 'I', 'E', 'N', 'D', 0xae, 0x42, 0x60, 0x82});
  return b;
}

// A JPEG whose start-of-frame says w × h, after an APP0 segment.
std::vector<unsigned char> jpeg_claiming(uint16_t w, uint16_t h) {
  std::vector<unsigned char> b;
  append(b, {0xff, 0xd8, 0xff, 0xe0, 0, 4, 'J', 'F'});
  append(b, {0xff, 0xc0, 0, 11, 8, h >> 8, h & 0xff, w >> 8, w & 0xff});
  append(b, {1, 1, 0x11, 0, 0xff, 0xd9});
  return b;
}

}  // namespace

TEST_CASE("hostile images: a header claiming too many pixels is refused before decoding") {
  CHECK_THROWS_WITH_AS(decode_image(png_claiming(20000, 20000), 1, "bomb.png"),
                       doctest::Contains("'bomb.png': 20000x20000 pixels, more than the limit"),
                       engine::Error);
  CHECK_THROWS_WITH_AS(decode_image(jpeg_claiming(65000, 65000), 3, "bomb.jpg"),
                       doctest::Contains("65000x65000 pixels"), engine::Error);
  CHECK_THROWS_WITH_AS(decode_image(png_claiming(0x7fffffff, 1), 1, "wide.png"),
                       doctest::Contains("pixels, more than the limit"), engine::Error);
  // The header parse agrees with OpenCV on real files of each format.
  const cv::Mat img(37, 53, CV_8UC3, cv::Scalar(10, 200, 30));
  for (const char* ext : {".png", ".jpg", ".bmp", ".tiff", ".webp", ".ppm"}) {
    const auto size = image_size_from_header(encode(img, ext));
    REQUIRE_MESSAGE(size.has_value(), ext);
    CHECK_MESSAGE(size->first == 53, ext);
    CHECK_MESSAGE(size->second == 37, ext);
  }
}

// A little-endian TIFF header and first directory with the given (tag, type, count, value)
// entries; no image data follows.
std::vector<unsigned char> tiff_with(std::initializer_list<std::array<uint32_t, 4>> entries) {
  std::vector<unsigned char> b;
  auto put = [&](uint64_t v, int bytes) {
    for (int i = 0; i < bytes; ++i) b.push_back(static_cast<unsigned char>(v >> (8 * i)));
  };
  append(b, {'I', 'I', 42, 0, 8, 0, 0, 0});
  put(entries.size(), 2);
  for (const auto& [tag, type, count, value] : entries) {
    put(tag, 2), put(type, 2), put(count, 4), put(value, 4);
  }
  put(0, 4);
  return b;
}

TEST_CASE("hostile images: a TIFF that states its size twice or oddly is refused") {
  // Found by fuzz_image: our parse took the last width, libtiff the first, and OpenCV then
  // allocated 2.5 GB. Duplicates, counts other than 1 and types other than SHORT or LONG are
  // all refused before decoding.
  CHECK(image_size_from_header(tiff_with({{256, 4, 1, 16}, {257, 4, 1, 8}})) ==
        std::pair<uint64_t, uint64_t>{16, 8});
  CHECK(image_size_from_header(tiff_with({{256, 3, 1, 16}, {257, 3, 1, 8}})).has_value());
  for (const auto& bad :
       {tiff_with({{256, 4, 1, 655360}, {256, 4, 1, 5}, {257, 4, 1, 8}}),
        tiff_with({{256, 4, 1, 16}, {257, 4, 2, 8}}), tiff_with({{256, 1, 1, 16}, {257, 4, 1, 8}}),
        tiff_with({{256, 16, 1, 16}, {257, 4, 1, 8}}),
        tiff_with({{256, 4, 1, 0}, {256, 4, 1, 16}, {257, 4, 1, 8}})}) {
    CHECK_FALSE(image_size_from_header(bad).has_value());
    CHECK_THROWS_WITH_AS(decode_image(bad, 3, "twice.tiff"),
                         doctest::Contains("'twice.tiff': not an image vit reads"), engine::Error);
  }
  // A directory that runs past the end of the file.
  auto cut = tiff_with({{256, 4, 1, 16}, {257, 4, 1, 8}});
  cut.resize(cut.size() - 8);
  CHECK_FALSE(image_size_from_header(cut).has_value());
}

TEST_CASE("hostile images: a PNM header is read as OpenCV reads it") {
  // Found by fuzz_image: OpenCV takes the byte after a number as its delimiter, even a '#', so
  // "5356#166678" is two numbers to it (and a 2.7 GB image), not a number and a comment.
  auto pnm = [](const std::string& text) {
    return std::vector<unsigned char>(text.begin(), text.end());
  };
  CHECK(image_size_from_header(pnm("P3\n5356#166678\n2 ")) ==
        std::pair<uint64_t, uint64_t>{5356, 166678});
  CHECK_THROWS_WITH_AS(decode_image(pnm("P3\n5356#166678\n2 "), 3, "bomb.ppm"),
                       doctest::Contains("5356x166678 pixels, more than the limit"), engine::Error);
  CHECK(image_size_from_header(pnm("P5\n# a comment\n 7\t3\n255\n")) ==
        std::pair<uint64_t, uint64_t>{7, 3});
  CHECK(image_size_from_header(pnm("P5 7 # three\n3\n255\n")) ==
        std::pair<uint64_t, uint64_t>{7, 3});
  CHECK(image_size_from_header(pnm("P5 7x3\n255\n")) == std::pair<uint64_t, uint64_t>{7, 3});
  CHECK_FALSE(image_size_from_header(pnm("P5 x7 3\n255\n")).has_value());
}

TEST_CASE("hostile images: only files OpenCV gives to the decoder we checked are decoded") {
  // Found by fuzz_image: "P3" not followed by whitespace is no PNM to OpenCV, which then tried
  // its later decoders; with "DICM" at byte 128 GDCM took the file and aborted the process.
  std::vector<unsigned char> dicom(160, '0');
  dicom[0] = 'P', dicom[1] = '3';
  std::memcpy(&dicom[128], "DICM", 4);
  CHECK_THROWS_WITH_AS(decode_image(dicom, 3, "x.ppm"),
                       doctest::Contains("'x.ppm': not an image vit reads"), engine::Error);
  // Each format's signature exactly as OpenCV checks it.
  auto png = encode(cv::Mat(5, 7, CV_8UC1, cv::Scalar(3)), ".png");
  REQUIRE(image_size_from_header(png).has_value());
  png[6] = 'x';  // inside "\r\n\x1a\n"
  CHECK_FALSE(image_size_from_header(png).has_value());
  auto jpeg = encode(cv::Mat(5, 7, CV_8UC1, cv::Scalar(3)), ".jpg");
  REQUIRE(image_size_from_header(jpeg).has_value());
  jpeg[2] = 0;
  CHECK_FALSE(image_size_from_header(jpeg).has_value());
  auto webp = encode(cv::Mat(5, 7, CV_8UC3, cv::Scalar(3)), ".webp");
  REQUIRE(image_size_from_header(webp) == std::pair<uint64_t, uint64_t>{7, 5});
  webp[12] = 'Q';  // the first chunk is no longer VP8/VP8L/VP8X: libwebp refuses it
  CHECK_FALSE(image_size_from_header(webp).has_value());
  CHECK_THROWS_WITH_AS(decode_image(webp, 3, "x.webp"), doctest::Contains("not an image vit reads"),
                       engine::Error);
}

TEST_CASE("hostile images: 1x1, 16-bit and alpha images decode to the model's input") {
  Preprocess p;
  p.img_size = 8, p.in_chans = 3, p.patch_size = 4, p.mean = {0.5f, 0.5f, 0.5f};
  p.std = {0.5f, 0.5f, 0.5f};
  std::vector<float> input(size_t(p.sample_size()));
  // 1×1: grows to the model's size, one colour everywhere.
  const cv::Mat one = decode_image(encode(cv::Mat(1, 1, CV_8UC3, cv::Scalar(0, 0, 255))), 3, "1");
  to_model_input(resize_center_crop(one, p.img_size, 1.0), p, input.data());
  CHECK(input[0] == doctest::Approx(1.0f));    // patch 0, channel R, pixel 0: (1 - 0.5) / 0.5
  CHECK(input[16] == doctest::Approx(-1.0f));  // channel G
  // 16-bit gray: 65535 reads as 255.
  const cv::Mat deep = decode_image(encode(cv::Mat(4, 4, CV_16UC1, cv::Scalar(65535))), 1, "16");
  CHECK(deep.type() == CV_8UC1);
  CHECK(deep.at<unsigned char>(0, 0) == 255);
  // RGBA (OpenCV's BGRA order): alpha dropped, channels in RGB order.
  const cv::Mat rgba =
      decode_image(encode(cv::Mat(4, 4, CV_8UC4, cv::Scalar(10, 20, 30, 0))), 3, "rgba");
  CHECK(rgba.type() == CV_8UC3);
  CHECK(rgba.at<cv::Vec3b>(0, 0) == cv::Vec3b(30, 20, 10));
  // Gray with alpha, read as gray.
  const cv::Mat ga =
      decode_image(encode(cv::Mat(4, 4, CV_8UC4, cv::Scalar(90, 90, 90, 7))), 1, "ga");
  CHECK(ga.type() == CV_8UC1);
  CHECK(ga.at<unsigned char>(0, 0) == 90);
}

TEST_CASE("hostile images: a folder of odd files is read, the bad ones skipped with reasons") {
  TempDir dir;
  const cv::Mat img(6, 6, CV_8UC1, cv::Scalar(128));
  write_file(dir.path / "cats" / "ok.png", encode(img));
  write_file(dir.path / "cats" / "ζώο 猫.png", encode(img));  // non-ASCII name
  write_file(dir.path / "dogs" / "ok.png", encode(img));
  write_file(dir.path / "dogs" / "zero.png", {});
  write_file(dir.path / "dogs" / "text.png", {'h', 'i', '\n'});
  write_file(dir.path / "dogs" / "bomb.png", png_claiming(20000, 20000));
  std::vector<unsigned char> jpeg = encode(cv::Mat(16, 16, CV_8UC3, cv::Scalar(1, 2, 3)), ".jpg");
  jpeg.resize(jpeg.size() / 2);
  write_file(dir.path / "dogs" / "truncated.jpg", jpeg);
  fs::create_symlink("loop.png", dir.path / "dogs" / "loop.png");          // a symlink loop
  fs::create_symlink("missing.png", dir.path / "dogs" / "broken.png");     // points nowhere
  fs::create_directory_symlink("..", dir.path / "dogs" / "up");            // a folder loop
  REQUIRE(::mkfifo((dir.path / "dogs" / "pipe.png").c_str(), 0644) == 0);  // blocks a plain open
  const ImageFolder folder(dir.path);
  REQUIRE(folder.classes() == std::vector<std::string>{"cats", "dogs"});
  CHECK(folder.samples().size() == 10);  // the loops are listed once, never followed
  std::vector<size_t> all(folder.samples().size());
  std::iota(all.begin(), all.end(), size_t{0});
  Preprocess p;
  p.img_size = 4, p.in_chans = 1, p.patch_size = 2, p.mean = {0.5f}, p.std = {0.5f};
  const ImageSource source(folder, all, p, SourceOptions{});
  CHECK(source.size() == 3);
  REQUIRE(source.skipped().size() == 7);
  std::string reasons;
  for (const std::string& s : source.skipped()) reasons += s + "\n";
  CHECK(reasons.find("zero.png': empty file") != std::string::npos);
  CHECK(reasons.find("text.png': not an image") != std::string::npos);
  CHECK(reasons.find("bomb.png': 20000x20000 pixels") != std::string::npos);
  CHECK(reasons.find("truncated.jpg': truncated image") != std::string::npos);
  CHECK(reasons.find("loop.png': cannot read: Too many levels of symbolic links") !=
        std::string::npos);
  CHECK(reasons.find("broken.png': no such file") != std::string::npos);
  CHECK(reasons.find("pipe.png': not a regular file") != std::string::npos);
  SourceOptions strict;
  strict.strict = true;
  CHECK_THROWS_AS(ImageSource(folder, all, p, strict), engine::Error);
}

TEST_CASE("hostile images: a class folder whose name is not UTF-8 is refused with one line") {
  TempDir dir;
  write_file(dir.path / "cats" / "a.png", encode(cv::Mat(4, 4, CV_8UC1, cv::Scalar(1))));
  write_file(dir.path / "caf\xe9" / "a.png", encode(cv::Mat(4, 4, CV_8UC1, cv::Scalar(1))));
  CHECK_THROWS_WITH_AS(ImageFolder{dir.path},
                       doctest::Contains("class folder name is not valid UTF-8"), engine::Error);
}

TEST_CASE("hostile images: an unreadable file is refused with its reason") {
  TempDir dir;
  write_file(dir.path / "a" / "locked.png", encode(cv::Mat(4, 4, CV_8UC1, cv::Scalar(1))));
  fs::permissions(dir.path / "a" / "locked.png", fs::perms::none);
  // Root reads any file, and CI runs as root: the read is tried in a child process that first
  // becomes the unprivileged user nobody (65534), and the child reports the error it got.
  fs::permissions(dir.path, fs::perms::owner_all | fs::perms::group_exec | fs::perms::others_exec);
  fs::permissions(dir.path / "a",
                  fs::perms::owner_all | fs::perms::group_exec | fs::perms::others_exec);
  int out[2];
  REQUIRE(::pipe(out) == 0);
  const pid_t child = ::fork();
  REQUIRE(child >= 0);
  if (child == 0) {
    ::close(out[0]);
    std::string message = "no error";
    if (::geteuid() == 0 &&
        (::setgroups(0, nullptr) != 0 || ::setgid(65534) != 0 || ::setuid(65534) != 0)) {
      message = "could not drop privileges";
    } else {
      try {
        load_image(dir.path / "a" / "locked.png", 1);
      } catch (const std::exception& e) {
        message = e.what();
      }
    }
    const ssize_t written = ::write(out[1], message.data(), message.size());
    ::_exit(written == ssize_t(message.size()) ? 0 : 1);
  }
  ::close(out[1]);
  std::string message;
  char buf[512];
  for (ssize_t n; (n = ::read(out[0], buf, sizeof buf)) > 0;) message.append(buf, size_t(n));
  ::close(out[0]);
  int status = 0;
  ::waitpid(child, &status, 0);
  CHECK(WIFEXITED(status));
  INFO(message);
  CHECK(message.find("locked.png': cannot read: Permission denied") != std::string::npos);
}
