// Entry point ONNX Runtime calls from SessionOptions.register_custom_ops_library,
// the one registration table of com.quake ops, and a tiny C API the Python
// package reads with ctypes.
#include <chrono>
#include <cstring>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "kernels.h"
#include "op_kernels.h"

namespace quake {
namespace {

constexpr const char* kDomain = "com.quake";

struct OpEntry {
  const char* name;
  OpKind kind;
};
// The registration table: every op of ops.md, each for float and float16.
constexpr OpEntry kOps[] = {
    {"Exp", OpKind::kExp},
    {"Sigmoid", OpKind::kSigmoid},
    {"Silu", OpKind::kSilu},
    {"Gelu", OpKind::kGelu},
    {"Softmax", OpKind::kSoftmax},
    {"LogSoftmax", OpKind::kLogSoftmax},
    {"Attention", OpKind::kAttention},
    {"Glu", OpKind::kGlu},
};
constexpr ONNXTensorElementDataType kTypes[] = {ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT,
                                                ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT16};

const std::vector<std::unique_ptr<OpDef>>& op_defs() {
  static const std::vector<std::unique_ptr<OpDef>> defs = [] {
    std::vector<std::unique_ptr<OpDef>> v;
    for (const OpEntry& op : kOps) {
      for (ONNXTensorElementDataType type : kTypes) v.push_back(std::make_unique<OpDef>(op.name, op.kind, type));
    }
    return v;
  }();
  return defs;
}

// ORT does not own a custom-op domain: each registration's domain is kept
// alive here for the life of the process (sessions may outlive their options).
std::mutex g_domains_mutex;
std::vector<Ort::CustomOpDomain>& domains() {
  static std::vector<Ort::CustomOpDomain> d;
  return d;
}

}  // namespace
}  // namespace quake

extern "C" {

__attribute__((visibility("default"))) OrtStatus* ORT_API_CALL RegisterCustomOps(OrtSessionOptions* options,
                                                                                 const OrtApiBase* api_base) {
  const OrtApi* api = api_base->GetApi(ORT_API_VERSION);
  if (api == nullptr) {
    // An ONNX Runtime older than our headers: API 1 still has CreateStatus.
    const std::string message = std::string("quake-onnx needs ONNX Runtime >= 1.21 (C API version ") +
                                std::to_string(ORT_API_VERSION) + "); this process runs ONNX Runtime " +
                                api_base->GetVersionString();
    const OrtApi* oldest = api_base->GetApi(1);
    return oldest ? oldest->CreateStatus(ORT_FAIL, message.c_str()) : nullptr;
  }
  Ort::InitApi(api);
  try {
    const char* isa_error = nullptr;
    if (quake::select_kernels(&isa_error) == nullptr) return api->CreateStatus(ORT_INVALID_ARGUMENT, isa_error);
    Ort::CustomOpDomain domain(quake::kDomain);
    for (const auto& def : quake::op_defs()) domain.Add(def.get());
    Ort::UnownedSessionOptions session_options(options);
    session_options.Add(domain);
    std::lock_guard<std::mutex> lock(quake::g_domains_mutex);
    quake::domains().push_back(std::move(domain));
    return nullptr;
  } catch (const std::exception& e) {
    return api->CreateStatus(ORT_FAIL, e.what());
  }
}

// The kernel table a session created now would use ("scalar", "avx2", ...),
// or the QUAKE_ISA error text.
__attribute__((visibility("default"))) const char* QuakeSelectedIsa() {
  const char* error = nullptr;
  const quake::KernelTable* table = quake::select_kernels(&error);
  return table ? table->name : error;
}

// What runs com.quake Attention's precision "bfloat16" in a session created
// now: "AVX512-BF16", "NEON BFMMLA", "NEON BFDOT" or "float32 fallback" (kernels.h,
// attention_bf16_block), or the QUAKE_ISA / QUAKE_NEON_BF16 error text.
__attribute__((visibility("default"))) const char* QuakeAttentionBf16Engine() {
  const char* error = nullptr;
  const quake::KernelTable* table = quake::select_kernels(&error);
  if (table == nullptr) return error;
  const char* engine = nullptr;
  quake::attention_bf16_block(table, &engine);
  return engine;
}

// What computes float16 Exp, Sigmoid, Silu and Gelu in a session created now
// (kernels.h, float16_engine), or the QUAKE_ISA / QUAKE_F16 error text.
__attribute__((visibility("default"))) const char* QuakeFloat16Engine() {
  const char* error = nullptr;
  const quake::KernelTable* table = quake::select_kernels(&error);
  return table ? quake::float16_engine(table) : error;
}

// Comma-separated ISAs this build and CPU can run, lowest first.
__attribute__((visibility("default"))) const char* QuakeAvailableIsas() {
  static const std::string names = [] {
    std::string s;
    for (quake::Isa isa : {quake::Isa::kScalar, quake::Isa::kNeon, quake::Isa::kAvx2, quake::Isa::kAvx512}) {
      if (const quake::KernelTable* t = quake::kernels_for(isa)) s += (s.empty() ? "" : ",") + std::string(t->name);
    }
    return s;
  }();
  return names.c_str();
}

// The memory roofline of the op benchmark (quake_onnx/bench/machine.py): the
// seconds `threads` threads take to copy src to dst `repeats` times, each
// thread copying its contiguous share. Threads are started once per call,
// and each repeats its own copies without waiting for the others, so that
// starting them is spread over all the copies.
__attribute__((visibility("default"))) double QuakeCopySeconds(const float* src, float* dst, size_t n, int threads,
                                                               int repeats) {
  if (threads < 1) threads = 1;
  const auto start = std::chrono::steady_clock::now();
  auto copy_share = [=](int t) {
    const size_t begin = n * static_cast<size_t>(t) / static_cast<size_t>(threads);
    const size_t end = n * static_cast<size_t>(t + 1) / static_cast<size_t>(threads);
    for (int r = 0; r < repeats; ++r) std::memcpy(dst + begin, src + begin, (end - begin) * sizeof(float));
  };
  std::vector<std::thread> pool;
  for (int t = 1; t < threads; ++t) pool.emplace_back(copy_share, t);
  copy_share(0);
  for (std::thread& th : pool) th.join();
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
}

}  // extern "C"
