#include "op_kernels.h"

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <limits>
#include <memory>
#include <string>
#include <thread>
#include <type_traits>
#include <vector>

#include "attention.h"
#include "constants.h"
#include "cpu_caches.h"
#include "kernels.h"

namespace quake {
namespace {

// Elements per parallel task: below two tasks' worth the work runs inline, so
// small tensors do not pay for waking the pool.
constexpr size_t kGrain = 16384;
// float16 work goes through float32 in blocks of this many elements.
constexpr size_t kHalfBlock = 1024;
// Columns gathered at once for a softmax over a non-last axis.
constexpr size_t kColumnTile = 16;

OrtStatusPtr make_error(const std::string& message) {
  return Ort::GetApi().CreateStatus(ORT_INVALID_ARGUMENT, message.c_str());
}

// Attribute access that tells "absent" (use the default) from "wrong type".
class Attributes {
 public:
  Attributes(const OrtKernelInfo* info, std::string where) : info_(info), where_(std::move(where)) {}

  const std::string& where() const { return where_; }

  bool get_int(const char* name, int64_t fallback, int64_t* out, std::string* error) const {
    *out = fallback;
    return read(name, "an int", error, [&] { return Ort::GetApi().KernelInfoGetAttribute_int64(info_, name, out); });
  }
  bool get_float(const char* name, float fallback, float* out, std::string* error) const {
    *out = fallback;
    return read(name, "a float", error, [&] { return Ort::GetApi().KernelInfoGetAttribute_float(info_, name, out); });
  }
  bool get_string(const char* name, const char* fallback, std::string* out, std::string* error) const {
    *out = fallback;
    size_t size = 0;
    OrtStatus* status = Ort::GetApi().KernelInfoGetAttribute_string(info_, name, nullptr, &size);
    if (status != nullptr) return absent_or_error(status, name, "a string", error);
    std::string value(size, '\0');
    status = Ort::GetApi().KernelInfoGetAttribute_string(info_, name, &value[0], &size);
    if (status != nullptr) return absent_or_error(status, name, "a string", error);
    value.resize(size > 0 ? size - 1 : 0);  // size counts the terminating NUL
    *out = value;
    return true;
  }

 private:
  template <typename Call>
  bool read(const char* name, const char* kind, std::string* error, Call call) const {
    OrtStatus* status = call();
    return status == nullptr || absent_or_error(status, name, kind, error);
  }
  bool absent_or_error(OrtStatus* status, const char* name, const char* kind, std::string* error) const {
    const std::string message = Ort::GetApi().GetErrorMessage(status);
    Ort::GetApi().ReleaseStatus(status);
    if (message.find("No attribute") != std::string::npos) return true;  // absent: keep the default
    *error = where_ + ": attribute '" + name + "' must be " + kind;
    return false;
  }

  const OrtKernelInfo* info_;
  std::string where_;
};

std::string describe_node(const char* op_name, const OrtKernelInfo* info) {
  std::string node;
  size_t size = 0;
  const OrtApi& api = Ort::GetApi();
  if (OrtStatus* s = api.KernelInfo_GetNodeName(info, nullptr, &size)) {
    api.ReleaseStatus(s);
  } else if (size > 1) {
    node.resize(size);
    if (OrtStatus* s2 = api.KernelInfo_GetNodeName(info, &node[0], &size)) {
      api.ReleaseStatus(s2);
      node.clear();
    } else {
      node.resize(size - 1);
    }
  }
  return std::string("com.quake ") + op_name + " node '" + node + "'";
}

// Rank of input 0 if the model states it, else -1.
int64_t known_input_rank(const OrtKernelInfo* info) {
  const OrtApi& api = Ort::GetApi();
  OrtTypeInfo* type_info = nullptr;
  if (OrtStatus* s = api.KernelInfo_GetInputTypeInfo(info, 0, &type_info)) {
    api.ReleaseStatus(s);
    return -1;
  }
  int64_t rank = -1;
  const OrtTensorTypeAndShapeInfo* tensor_info = nullptr;
  if (OrtStatus* s = api.CastTypeInfoToTensorInfo(type_info, &tensor_info)) {
    api.ReleaseStatus(s);
  } else if (tensor_info != nullptr) {
    size_t count = 0;
    if (OrtStatus* s2 = api.GetDimensionsCount(tensor_info, &count)) {
      api.ReleaseStatus(s2);
    } else if (count > 0) {
      rank = static_cast<int64_t>(count);  // 0 may mean "unknown": only trust positive ranks
    }
  }
  api.ReleaseTypeInfo(type_info);
  return rank;
}

std::string shape_text(const std::vector<int64_t>& shape) {
  std::string s = "[";
  for (size_t i = 0; i < shape.size(); ++i) s += (i ? "," : "") + std::to_string(shape[i]);
  return s + "]";
}

// ---------------------------------------------------------------------------
// Running a body over tasks on ORT's intra-op pool.

template <typename Body>
void parallel_tasks(const Ort::KernelContext& ctx, size_t tasks, const Body& body) {
  if (tasks <= 1) {
    if (tasks == 1) body(0);
    return;
  }
  struct Trampoline {
    static void run(void* data, size_t task) { (*static_cast<const Body*>(data))(task); }
  };
  ctx.ParallelFor(&Trampoline::run, tasks, 0, const_cast<Body*>(&body));
}

// parallel_tasks for bodies that may throw (std::bad_alloc from their work
// memory): no exception may leave a pool thread, so the first is kept and
// rethrown in the calling thread once every task has run (ComputeV2 turns
// it into an error status).
template <typename Body>
void parallel_tasks_rethrow(const Ort::KernelContext& ctx, size_t tasks, const Body& body) {
  std::exception_ptr first;
  std::atomic_flag taken = ATOMIC_FLAG_INIT;
  parallel_tasks(ctx, tasks, [&](size_t task) {
    try {
      body(task);
    } catch (...) {
      if (!taken.test_and_set()) first = std::current_exception();
    }
  });
  if (first) std::rethrow_exception(first);
}

// std::thread::hardware_concurrency() reads /sys/devices/system/cpu/online
// through glibc on every call: 17 % of a decode-step Attention call (9 heads,
// 49 keys, 13.7 us) went to that open. Read once.
unsigned logical_cores() {
  static const unsigned n = std::max(1u, std::thread::hardware_concurrency());
  return n;
}

inline void spin_pause() {
#if defined(__x86_64__) || defined(__i386__)
  __builtin_ia32_pause();
#elif defined(__aarch64__)
  __asm__ __volatile__("yield");
#endif
}

// phase1(i) for every piece i < pieces, then phase2(i) for every piece, in
// one parallel-for instead of two: each of ORT's dispatches costs 2-3 us on
// a VM, as much as half of a 50257-float Softmax row's work per thread.
// Workers claim phase-1 pieces from a counter; one that finds none left
// waits until every claimed piece is done, then runs phase 2 first on the
// pieces it ran phase 1 on, whose data (a Softmax chunk's stored terms) is
// still in its own L2 (taking pieces first-come there moved half of them
// between cores), then on any piece nobody has taken. A worker waits
// only for pieces that running workers are inside of, so this cannot
// deadlock when ORT runs the tasks one after another on one thread (the
// first task then does all the work and the others find none).
template <typename Phase1, typename Phase2>
void parallel_two_phases(const Ort::KernelContext& ctx, size_t pieces, const Phase1& phase1, const Phase2& phase2) {
  std::atomic<size_t> next{0}, done{0};
  std::unique_ptr<std::atomic<bool>[]> taken(new std::atomic<bool>[pieces]);
  for (size_t i = 0; i < pieces; ++i) taken[i].store(false, std::memory_order_relaxed);
  parallel_tasks(ctx, pieces, [&](size_t) {
    std::vector<size_t> mine;
    for (size_t i; (i = next.fetch_add(1, std::memory_order_relaxed)) < pieces;) {
      phase1(i);
      mine.push_back(i);
      done.fetch_add(1, std::memory_order_release);
    }
    while (done.load(std::memory_order_acquire) < pieces) spin_pause();
    for (size_t i : mine) {
      if (!taken[i].exchange(true, std::memory_order_relaxed)) phase2(i);
    }
    // A worker that arrived after phase 1 was all claimed helps with phase 2.
    for (size_t i = 0; i < pieces; ++i) {
      if (!taken[i].exchange(true, std::memory_order_relaxed)) phase2(i);
    }
  });
}

// Converts a float16 span through float32 blocks around a float kernel.
// `fn(in, out, count, offset)` works on float data; offset is the element
// index of the block within the span.
template <typename Fn>
void through_float(const uint16_t* x, uint16_t* y, size_t n, const KernelTable& k, const Fn& fn) {
  float in[kHalfBlock];
  float out[kHalfBlock];
  for (size_t done = 0; done < n; done += kHalfBlock) {
    const size_t count = std::min(kHalfBlock, n - done);
    k.f16_to_f32(x + done, in, count);
    fn(in, out, count, done);
    k.f32_to_f16(out, y + done, count);
  }
}

// float16 Exp's range (constants.h) on float results, for tables without
// float16 kernels.
void fit_exp_to_half(const float* x, float* y, size_t n) {
  for (size_t i = 0; i < n; ++i) {
    if (x[i] >= kHalfExpInfFrom) {
      y[i] = std::numeric_limits<float>::infinity();
    } else if (y[i] > kHalfMax) {
      y[i] = kHalfMax;
    }
  }
}

// ---------------------------------------------------------------------------
// How Softmax and LogSoftmax rows (the last axis) are cut, from this machine's
// cache sizes (cpu_caches.h) rather than constants tuned on one machine.
struct RowPlan {
  enum class Path {
    kOnePass,  // the one-row kernels, rows in groups
    kSplit,    // each row cut in chunks over the threads, one exponential per element (ChunkStats)
    kTwoPass,  // 2 reads + 1 write per row in chunks (RowStats, softmax_long.h)
  };
  Path path;
  size_t group_rows;      // rows through the one-pass kernel together: input and output in a quarter of L1
  size_t chunks_per_row;  // kSplit, kTwoPass: the cut of each row
  size_t block;           // floats per stats block of kTwoPass: a quarter of L1
};

// A group of rows through the one-pass kernels (softmax_rows.h) keeps its
// input and output in this share of L1. Measured on Zen 4 (32 KB L1D), rows
// of 64 to 1024 floats through 12 MB: groups of 8 KB (input + output) ran
// 1-11 % faster than groups of 16 KB and 8-37 % faster than groups sized by
// the input alone at half of L1 (the output's lines, and the prefetched
// lines of the next rows, evict the group before its later passes).
constexpr size_t kGroupL1Fraction = 4;
// A row beyond this share of L2 no longer stays there across the one-pass
// kernel's three passes (max, exp-and-store, scale): the two-pass path reads
// it twice and writes it once instead of three reads and two writes.
constexpr size_t kLongRowL2Fraction = 2;
// Fewer rows than this, each of at least 2 kMinChunk elements, are cut in
// chunks of at least kMinChunk, so every thread gets a part of one row.
constexpr size_t kFewRows = 4, kMinChunk = 16384, kMaxChunksPerRow = 16;

// QUAKE_SPLIT_ROWS=0 keeps a few long rows whole (one thread each), to
// compare; read once.
bool split_single_rows() {
  static const bool on = [] {
    const char* v = std::getenv("QUAKE_SPLIT_ROWS");
    return v == nullptr || std::strcmp(v, "0") != 0;
  }();
  return on;
}

// whole_rows: Softmax method "exaq", whose levels come from the whole row's
// max; the long-row paths compute the quake method only, so its rows take
// the one-pass path at any length.
RowPlan plan_rows(size_t rows, size_t len, bool whole_rows) {
  const CacheSizes& caches = cache_sizes();
  const size_t row_bytes = len * sizeof(float);
  RowPlan plan{RowPlan::Path::kOnePass, 0, 1, 0};
  plan.group_rows = std::min<size_t>(64, std::max<size_t>(1, caches.l1d / kGroupL1Fraction / (2 * row_bytes)));
  plan.block = std::max<size_t>(1024, caches.l1d / 4 / sizeof(float));
  if (whole_rows) return plan;
  // A power of two: pools of 2, 4, 8 threads get equal shares (3 chunks on 2 threads cap the gain at 1.5x).
  size_t chunks = 1;
  while (chunks * 2 <= std::min(kMaxChunksPerRow, len / kMinChunk)) chunks *= 2;
  if (rows < kFewRows && chunks > 1 && split_single_rows()) {
    plan.path = RowPlan::Path::kSplit;
    plan.chunks_per_row = chunks;
  } else if (row_bytes > caches.l2 / kLongRowL2Fraction) {
    plan.path = RowPlan::Path::kTwoPass;
    plan.chunks_per_row = rows < kFewRows ? chunks : 1;
  }
  return plan;
}

// ---------------------------------------------------------------------------
// Work memory of the calling thread, reused across calls and nodes: taken
// and zeroed once rather than per call (a std::vector per task zeroes all its
// floats every time). kTask: inside a task of a parallel section; kCall: what
// one call shares over its tasks (taken by the thread that starts the
// section, which runs tasks too). A thread keeps at most kScratchKeepFloats
// per slot between calls; a lease of more releases it when it ends, so one
// huge tensor does not pin its memory for the life of the thread. May throw
// std::bad_alloc.
enum class Scratch { kTask, kCall };
constexpr size_t kScratchKeepFloats = size_t{1} << 20;  // 4 MB

class ScratchLease {
 public:
  ScratchLease(size_t floats, Scratch which) : buffer_(slot(which)) {
    if (buffer_.size() < floats) buffer_.resize(floats);
  }
  ~ScratchLease() {
    if (buffer_.size() > kScratchKeepFloats) std::vector<float>().swap(buffer_);
  }
  ScratchLease(const ScratchLease&) = delete;
  ScratchLease& operator=(const ScratchLease&) = delete;
  float* data() { return buffer_.data(); }

 private:
  static std::vector<float>& slot(Scratch which) {
    thread_local std::vector<float> scratch[2];
    return scratch[static_cast<int>(which)];
  }
  std::vector<float>& buffer_;
};

// ---------------------------------------------------------------------------
// Kernels.

class QuakeKernel : public Kernel {
 public:
  QuakeKernel(const KernelTable* table, int order, ONNXTensorElementDataType type, std::string where)
      : table_(table),
        kernels_(table->order[order - 1]),
        half_(type == ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT16),
        where_(std::move(where)) {}

  OrtStatusPtr ComputeV2(OrtKernelContext* context) override {
    try {
      Ort::KernelContext ctx(context);
      return Run(ctx);
    } catch (const Ort::Exception& e) {
      return make_error(where_ + ": " + e.what());
    } catch (const std::exception& e) {
      return make_error(where_ + ": " + e.what());
    }
  }

 protected:
  virtual OrtStatusPtr Run(Ort::KernelContext& ctx) = 0;

  const KernelTable* table_;
  OrderKernels kernels_;
  bool half_;
  std::string where_;
};

// Exp, Sigmoid, Silu and Gelu: the same elementwise split, different bodies.
class ElementwiseKernel : public QuakeKernel {
 public:
  ElementwiseKernel(OpKind kind, float alpha, const KernelTable* table, int order, ONNXTensorElementDataType type,
                    std::string where)
      : QuakeKernel(table, order, type, std::move(where)), kind_(kind), alpha_(alpha) {}

 protected:
  OrtStatusPtr Run(Ort::KernelContext& ctx) override {
    Ort::ConstValue input = ctx.GetInput(0);
    const std::vector<int64_t> shape = input.GetTensorTypeAndShapeInfo().GetShape();
    Ort::UnownedValue output = ctx.GetOutput(0, shape);
    const size_t n = input.GetTensorTypeAndShapeInfo().GetElementCount();

    Ort::ConstValue bias_value{nullptr};
    size_t row = n;  // the bias period; whole tensor when there is no bias
    if (kind_ == OpKind::kGelu && ctx.GetInputCount() > 1) {
      bias_value = ctx.GetInput(1);
    }
    if (bias_value) {
      const std::vector<int64_t> bias_shape = bias_value.GetTensorTypeAndShapeInfo().GetShape();
      if (shape.empty() || bias_shape.size() != 1 || bias_shape[0] != shape.back()) {
        return make_error(where_ + ": B must be 1-D with X's last dimension; X is " + shape_text(shape) + ", B is " +
                          shape_text(bias_shape));
      }
      row = static_cast<size_t>(shape.back());
    }
    if (n == 0) return nullptr;

    // Tasks hold whole bias rows so each kernel call sees aligned bias.
    const size_t rows_total = bias_value ? n / row : 1;
    const size_t unit = bias_value ? row : 1;  // elements per schedulable unit
    const size_t units = bias_value ? rows_total : n;
    const size_t units_per_task = std::max<size_t>(1, kGrain / unit);
    const size_t tasks = (units + units_per_task - 1) / units_per_task;

    if (half_) {
      const uint16_t* x = input.GetTensorData<uint16_t>();
      uint16_t* y = output.GetTensorMutableData<uint16_t>();
      std::vector<float> bias_f;
      if (bias_value) {
        bias_f.resize(row);
        table_->f16_to_f32(bias_value.GetTensorData<uint16_t>(), bias_f.data(), row);
      }
      const float* bias = bias_value ? bias_f.data() : nullptr;
      parallel_tasks(ctx, tasks, [&](size_t task) {
        const size_t begin = task * units_per_task * unit;
        const size_t end = std::min(n, begin + units_per_task * unit);
        if (has_half_kernel()) {
          if (bias) {
            for (size_t r = begin; r < end; r += row) kernels_.half.gelu(x + r, bias, y + r, row);
          } else {
            apply_half(x + begin, y + begin, end - begin);
          }
        } else if (bias) {
          for (size_t r = begin; r < end; r += row) {
            through_float(x + r, y + r, row, *table_, [&](const float* in, float* out, size_t count, size_t off) {
              kernels_.gelu(in, bias + off, out, count);
            });
          }
        } else {
          through_float(x + begin, y + begin, end - begin, *table_,
                        [&](const float* in, float* out, size_t count, size_t) {
                          apply(in, nullptr, out, count);
                          if (kind_ == OpKind::kExp) fit_exp_to_half(in, out, count);
                        });
        }
      });
    } else {
      const float* x = input.GetTensorData<float>();
      float* y = output.GetTensorMutableData<float>();
      const float* bias = bias_value ? bias_value.GetTensorData<float>() : nullptr;
      parallel_tasks(ctx, tasks, [&](size_t task) {
        const size_t begin = task * units_per_task * unit;
        const size_t end = std::min(n, begin + units_per_task * unit);
        if (bias) {
          for (size_t r = begin; r < end; r += row) kernels_.gelu(x + r, bias, y + r, row);
        } else {
          apply(x + begin, nullptr, y + begin, end - begin);
        }
      });
    }
    return nullptr;
  }

 private:
  bool has_half_kernel() const {
    switch (kind_) {
      case OpKind::kExp:
        return kernels_.half.exp != nullptr;
      case OpKind::kSigmoid:
        return kernels_.half.sigmoid != nullptr;
      case OpKind::kSilu:
        return kernels_.half.silu != nullptr;
      case OpKind::kGelu:
        return kernels_.half.gelu != nullptr;
      default:
        return false;
    }
  }

  void apply_half(const uint16_t* x, uint16_t* y, size_t n) const {
    switch (kind_) {
      case OpKind::kExp:
        return kernels_.half.exp(x, y, n);
      case OpKind::kSigmoid:
        return kernels_.half.sigmoid(x, y, n);
      case OpKind::kSilu:
        return kernels_.half.silu(x, y, n, alpha_);
      case OpKind::kGelu:
        return kernels_.half.gelu(x, nullptr, y, n);
      default:
        return;
    }
  }

  void apply(const float* x, const float* bias, float* y, size_t n) const {
    switch (kind_) {
      case OpKind::kExp:
        return kernels_.exp(x, y, n);
      case OpKind::kSigmoid:
        return kernels_.sigmoid(x, y, n);
      case OpKind::kSilu:
        return kernels_.silu(x, y, n, alpha_);
      case OpKind::kGelu:
        return kernels_.gelu(x, bias, y, n);
      default:
        return;
    }
  }

  OpKind kind_;
  float alpha_;
};

// Softmax and LogSoftmax over one axis (opset-13 semantics).
class AxisKernel : public QuakeKernel {
 public:
  AxisKernel(RowsFn OrderKernels::* row_fn, int64_t axis, const KernelTable* table, int order,
             ONNXTensorElementDataType type, std::string where)
      : QuakeKernel(table, order, type, std::move(where)), row_fn_(row_fn), axis_(axis) {}
  // Softmax with method "exaq".
  AxisKernel(const ExaqParams& exaq, int64_t axis, const KernelTable* table, ONNXTensorElementDataType type,
             std::string where)
      : QuakeKernel(table, 2, type, std::move(where)), row_fn_(nullptr), axis_(axis), exaq_(true), exaq_params_(exaq) {}

 protected:
  OrtStatusPtr Run(Ort::KernelContext& ctx) override {
    Ort::ConstValue input = ctx.GetInput(0);
    const std::vector<int64_t> shape = input.GetTensorTypeAndShapeInfo().GetShape();
    Ort::UnownedValue output = ctx.GetOutput(0, shape);
    const int64_t rank = static_cast<int64_t>(shape.size());
    if (axis_ < -rank || axis_ >= rank) {
      return make_error(where_ + ": axis " + std::to_string(axis_) + " is out of range for input of shape " +
                        shape_text(shape));
    }
    const size_t axis = static_cast<size_t>(axis_ < 0 ? axis_ + rank : axis_);
    size_t outer = 1, inner = 1;
    for (size_t i = 0; i < axis; ++i) outer *= static_cast<size_t>(shape[i]);
    for (size_t i = axis + 1; i < shape.size(); ++i) inner *= static_cast<size_t>(shape[i]);
    const size_t len = static_cast<size_t>(shape[axis]);
    if (outer * len * inner == 0) return nullptr;

    if (half_) {
      Run<uint16_t>(ctx, input.GetTensorData<uint16_t>(), output.GetTensorMutableData<uint16_t>(), outer, len, inner);
    } else {
      Run<float>(ctx, input.GetTensorData<float>(), output.GetTensorMutableData<float>(), outer, len, inner);
    }
    return nullptr;
  }

 private:
  // Loads `count` elements of T into float, stores float back to T.
  void load(const float* x, float* y, size_t count) const { std::memcpy(y, x, count * sizeof(float)); }
  void load(const uint16_t* x, float* y, size_t count) const { table_->f16_to_f32(x, y, count); }
  void store(const float* x, float* y, size_t count) const {
    if (x != y) std::memcpy(y, x, count * sizeof(float));
  }
  void store(const float* x, uint16_t* y, size_t count) const { table_->f32_to_f16(x, y, count); }

  template <typename T>
  void Run(Ort::KernelContext& ctx, const T* x, T* y, size_t outer, size_t len, size_t inner) const {
    const RowPlan plan = plan_rows(outer, len, exaq_);
    // In groups that fit L1: a group goes through the kernel's passes while in cache.
    const auto rows_fn = [this, &plan](const float* a, float* b, size_t rows, size_t n) {
      for (size_t r = 0; r < rows; r += plan.group_rows) {
        const size_t g = std::min(plan.group_rows, rows - r);
        if (exaq_) {
          table_->softmax_exaq(a + r * n, b + r * n, g, n, exaq_params_);
        } else {
          (kernels_.*row_fn_)(a + r * n, b + r * n, g, n);
        }
      }
    };
    if (inner == 1) {
      if (plan.path == RowPlan::Path::kSplit) return RunSplit(ctx, x, y, outer, len, plan.chunks_per_row);
      if constexpr (std::is_same<T, float>::value) {
        if (plan.path == RowPlan::Path::kTwoPass) return RunTwoPass(ctx, x, y, outer, len, plan, rows_fn);
      }
      const size_t rows_per_task = std::max<size_t>(1, kGrain / len);
      const size_t tasks = (outer + rows_per_task - 1) / rows_per_task;
      parallel_tasks_rethrow(ctx, tasks, [&](size_t task) {
        const size_t begin = task * rows_per_task, end = std::min(outer, begin + rows_per_task);
        if constexpr (std::is_same<T, float>::value) {
          rows_fn(x + begin * len, y + begin * len, end - begin, len);
        } else {
          // float16: one L1 group at a time through a float buffer, so the
          // conversions and the kernel's passes all hit L1.
          ScratchLease lease(std::min(plan.group_rows, end - begin) * len, Scratch::kTask);
          float* buf = lease.data();
          for (size_t r = begin; r < end; r += plan.group_rows) {
            const size_t count = std::min(plan.group_rows, end - r) * len;
            load(x + r * len, buf, count);
            rows_fn(buf, buf, count / len, len);
            store(buf, y + r * len, count);
          }
        }
      });
      return;
    }
    // Non-last axis: gather a tile of columns into contiguous rows, run the
    // row kernel on each, scatter back. Reads stay within cache lines of the
    // tile, so strided access costs little.
    const size_t tiles_per_block = (inner + kColumnTile - 1) / kColumnTile;
    const size_t tasks = outer * tiles_per_block;
    parallel_tasks_rethrow(ctx, tasks, [&](size_t task) {
      const size_t o = task / tiles_per_block, c0 = (task % tiles_per_block) * kColumnTile;
      const size_t cols = std::min(kColumnTile, inner - c0);
      const T* xb = x + o * len * inner + c0;
      T* yb = y + o * len * inner + c0;
      std::vector<float> buf(cols * len);
      float line[kColumnTile];
      for (size_t k = 0; k < len; ++k) {
        load(xb + k * inner, line, cols);
        for (size_t c = 0; c < cols; ++c) buf[c * len + k] = line[c];
      }
      rows_fn(buf.data(), buf.data(), cols, len);
      for (size_t k = 0; k < len; ++k) {
        for (size_t c = 0; c < cols; ++c) line[c] = buf[c * len + k];
        store(line, yb + k * inner, cols);
      }
    });
  }

  // A few long rows, each cut in `per_row` chunks over the threads: phase 1
  // runs the one-row kernel's first passes on each chunk against the
  // chunk's own max (Softmax stores the terms); phase 2 combines a row's
  // chunks and scales each chunk's terms by e^(chunk max - row max) / sum
  // (LogSoftmax: (x - max) - log sum). One exponential per element, so one
  // thread is as fast as the one-row kernel; rows sum to 1 within rounding
  // (the same terms are summed and scaled). float16: each chunk is converted
  // into float buffers by the thread of its phase 1 and back by the thread
  // of its phase 2 (the same one, but for a late worker's chunks).
  template <typename T>
  void RunSplit(Ort::KernelContext& ctx, const T* x, T* y, size_t rows, size_t len, size_t per_row) const {
    constexpr bool kFloat = std::is_same<T, float>::value;
    const size_t chunk = (len + per_row - 1) / per_row;
    const bool log = row_fn_ == &OrderKernels::logsoftmax;
    constexpr float kInf = std::numeric_limits<float>::infinity();
    std::vector<ChunkStats> stats(rows * per_row, ChunkStats{-kInf, 0.0, false});
    // float16: the input and Softmax's terms in float, apart (in place the
    // kernel would take its max pass first); LogSoftmax shifts in place.
    ScratchLease lease(kFloat ? 0 : (log ? 1 : 2) * rows * len, Scratch::kCall);
    float* const wide_in = kFloat ? nullptr : lease.data();
    float* const wide_out = kFloat || log ? wide_in : wide_in + rows * len;
    const auto in = [&](size_t at) -> const float* {
      if constexpr (kFloat) return x + at;
      return wide_in + at;
    };
    const auto out = [&](size_t at) -> float* {
      if constexpr (kFloat) return y + at;
      return wide_out + at;
    };
    const auto chunk_stats = [&](size_t task) {
      const size_t r = task / per_row, begin = (task % per_row) * chunk;
      if (begin >= len) return;
      const size_t at = r * len + begin, n = std::min(chunk, len - begin);
      if constexpr (!kFloat) load(x + at, wide_in + at, n);
      kernels_.softmax_partial(in(at), log ? nullptr : out(at), n, &stats[task]);
    };
    parallel_two_phases(ctx, rows * per_row, chunk_stats, [&](size_t task) {
      const size_t r = task / per_row, begin = (task % per_row) * chunk;
      if (begin >= len) return;
      const size_t at = r * len + begin, n = std::min(chunk, len - begin);
      ChunkStats row = stats[r * per_row];
      for (size_t c = 1; c < per_row; ++c) row = combine_chunks(row, stats[r * per_row + c]);
      const ChunkStats& mine = stats[task];
      if (row.nan) return fill_value(y + at, n, std::numeric_limits<float>::quiet_NaN());
      if (row.max == -kInf) return fill_value(y + at, n, log ? -kInf : 0.0f);
      if (log) {
        const double log_sum = std::log(row.sum);
        kernels_.shift(in(at), out(at), n, row.max, static_cast<float>(log_sum));
      } else if (mine.max == -kInf) {
        return fill_value(y + at, n, 0.0f);  // a fully masked chunk: no terms stored
      } else {
        kernels_.scale(out(at), n, static_cast<float>(std::exp(static_cast<double>(mine.max) - row.max) / row.sum));
      }
      if constexpr (!kFloat) store(out(at), y + at, n);
    });
  }

  static void fill_value(float* y, size_t n, float v) { std::fill(y, y + n, v); }
  void fill_value(uint16_t* y, size_t n, float v) const {
    uint16_t h;
    table_->f32_to_f16(&v, &h, 1);
    std::fill(y, y + n, h);
  }

  // Rows in two passes over memory (softmax_long.h): every row cut into
  // `chunks_per_row` chunks; phase 1 takes each chunk's stats, phase 2
  // combines a row's stats and finishes each chunk (a whole row: right after
  // its stats). Rows whose max is beyond kRowStatsLimit are redone with the
  // one-row kernel.
  template <typename RowsFnT>
  void RunTwoPass(Ort::KernelContext& ctx, const float* x, float* y, size_t rows, size_t len, const RowPlan& plan,
                  const RowsFnT& rows_fn) const {
    const size_t per_row = plan.chunks_per_row, chunk = (len + per_row - 1) / per_row;
    std::vector<RowStats> stats(rows * per_row);
    const auto chunk_stats = [&](size_t task) {
      const size_t r = task / per_row, begin = (task % per_row) * chunk;
      const size_t n = begin < len ? std::min(chunk, len - begin) : 0;
      stats[task] = RowStats{-std::numeric_limits<float>::infinity(), 0.0, 0.0, false};  // an empty chunk
      if (n) kernels_.softmax_stats(x + r * len + begin, n, plan.block, &stats[task]);
    };
    const bool log = row_fn_ == &OrderKernels::logsoftmax;
    const auto finish = [&](size_t task) {
      const size_t r = task / per_row, begin = (task % per_row) * chunk;
      if (begin >= len) return;
      RowStats row = stats[r * per_row];
      for (size_t c = 1; c < per_row; ++c) row = combine_stats(row, stats[r * per_row + c]);
      if (!row.nan && row.max != -std::numeric_limits<float>::infinity() && !(std::fabs(row.max) <= kRowStatsLimit)) {
        if (begin == 0) rows_fn(x + r * len, y + r * len, 1, len);  // the whole row, once
        return;
      }
      const size_t n = std::min(chunk, len - begin);
      (log ? kernels_.logsoftmax_finish : kernels_.softmax_finish)(x + r * len + begin, y + r * len + begin, n,
                                                                   plan.block, row);
    };
    if (per_row > 1) return parallel_two_phases(ctx, rows * per_row, chunk_stats, finish);
    // Whole rows: each finished right after its stats, while its tail is still in L2.
    parallel_tasks(ctx, rows, [&](size_t r) {
      chunk_stats(r);
      finish(r);
    });
  }

  RowsFn OrderKernels::* row_fn_;
  int64_t axis_;
  bool exaq_ = false;
  ExaqParams exaq_params_{3, 0.0f};
};

// Attention (FlashAttention-2, attention.h): the op layer resolves the
// broadcast, sizes the tiles from the caches, and runs the tasks on ORT's
// pool, then the combination of split rows when decode shapes were split.
class AttentionKernel : public QuakeKernel {
 public:
  // bf16: precision "bfloat16", run by the CPU's bf16 block when it has one,
  // else by the table's float32 block (attention_bf16_block).
  AttentionKernel(float scale, bool causal, bool k_transposed, bool bf16, const KernelTable* table, int order,
                  ONNXTensorElementDataType type, std::string where)
      : QuakeKernel(table, order, type, std::move(where)), scale_(scale), causal_(causal), k_transposed_(k_transposed) {
    const char* engine = nullptr;
    bf16_block_ = bf16 ? attention_bf16_block(table, &engine) : nullptr;
  }

 protected:
  OrtStatusPtr Run(Ort::KernelContext& ctx) override {
    Ort::ConstValue q = ctx.GetInput(0), k = ctx.GetInput(1), v = ctx.GetInput(2);
    Ort::ConstValue mask{nullptr};
    if (ctx.GetInputCount() > 3) mask = ctx.GetInput(3);
    AttentionShapes shapes;
    shapes.q = q.GetTensorTypeAndShapeInfo().GetShape();
    shapes.k = k.GetTensorTypeAndShapeInfo().GetShape();
    shapes.v = v.GetTensorTypeAndShapeInfo().GetShape();
    shapes.has_mask = static_cast<bool>(mask);
    if (mask) shapes.mask = mask.GetTensorTypeAndShapeInfo().GetShape();
    shapes.k_transposed = k_transposed_;
    AttentionLayout layout;
    const std::string error = plan_attention_layout(shapes, &layout);
    if (!error.empty()) return make_error(where_ + ": " + error);
    Ort::UnownedValue output = ctx.GetOutput(0, layout.out_shape);
    if (output.GetTensorTypeAndShapeInfo().GetElementCount() == 0) return nullptr;
    // Decode with GQA/MQA: a group's query heads share each K/V tile read.
    const bool folded = fold_decode_groups(&layout);

    AttentionParams p{};
    p.sq = layout.sq;
    p.skv = layout.skv;
    p.d = layout.d;
    p.dv = layout.dv;
    p.scale = scale_;
    p.causal = causal_ && !folded;  // at Sq = 1 causal masks nothing
    p.k_transposed = k_transposed_;
    p.half = half_;
    // Query blocks of one row (decode without grouped heads) keep the float32
    // products: they are bound by reading K and V, which bf16 would first
    // convert (measured 0.36x at H8 Skv 4096; 1.05x at 2 rows, 1.4x at 4).
    p.bf16 = bf16_block_ != nullptr && layout.sq >= kBf16MinRows;
    const AttentionBlockFn block = p.bf16 ? bf16_block_ : table_->attention_block;
    p.mask_row_stride = layout.mask_row_stride;
    p.mask_col_broadcast = layout.mask_col_broadcast;
    p.tiles = choose_attention_tiles(cache_sizes(), p.sq, p.skv, p.d, p.dv);
    p.online_softmax = kernels_.online_softmax;
    p.f16_to_f32 = table_->f16_to_f32;
    p.f32_to_f16 = table_->f32_to_f16;

    const size_t elem = half_ ? sizeof(uint16_t) : sizeof(float);
    const char* qb = static_cast<const char*>(q.GetTensorRawData());
    const char* kb = static_cast<const char*>(k.GetTensorRawData());
    const char* vb = static_cast<const char*>(v.GetTensorRawData());
    const char* mb = mask ? static_cast<const char*>(mask.GetTensorRawData()) : nullptr;
    char* yb = static_cast<char*>(output.GetTensorMutableRawData());
    std::vector<AttentionHead> heads(layout.q_off.size());
    for (size_t h = 0; h < heads.size(); ++h) {
      heads[h] = {qb + layout.q_off[h] * elem, kb + layout.k_off[h] * elem, vb + layout.v_off[h] * elem,
                  mb ? mb + layout.mask_off[h] * elem : nullptr, yb + h * p.sq * p.dv * elem};
    }

    AttentionTaskPlan plan;
    const size_t parallelism = kSplitTasksPerCore * logical_cores();
    plan_attention_tasks(p, heads.size(), parallelism, &plan);
    AttentionPacking packing;
    if (plan_attention_packing(&p, heads.data(), heads.size(), &packing)) {
      float* packed = packing_buffer(packing.floats());
      if (packed == nullptr) return make_error(where_ + ": out of memory for the packed attention keys");
      attention_packing_assign(p, packing, packed, heads.data(), heads.size());
    }
    const size_t scratch_floats = attention_scratch_floats(p);
    std::atomic<bool> failed{false};
    // No exception may leave a pool thread: out of memory (for the scratch or
    // in the GEMM's packing buffers) fails the run instead.
    auto guarded = [&](const auto& step) {
      try {
        ScratchLease lease(scratch_floats, Scratch::kTask);
        step(lease.data());
      } catch (const std::exception&) {
        failed = true;
      }
    };
    if (p.packed) {
      parallel_tasks(ctx, packing.sources.size() * packing.tiles, [&](size_t i) {
        guarded([&](float* scratch) {
          table_->attention_pack(p, heads[packing.sources[i / packing.tiles]], i % packing.tiles, scratch);
        });
      });
    }
    if (!failed) {
      parallel_tasks(ctx, plan.tasks.size(), [&](size_t i) {
        guarded([&](float* scratch) { block(p, heads[plan.tasks[i].head], plan.tasks[i], scratch); });
      });
    }
    if (failed) return make_error(where_ + ": out of memory for the attention tiles");
    if (plan.chunks > 1) {
      parallel_tasks(ctx, plan.blocks, [&](size_t b) { combine_attention_partials(p, heads.data(), plan, b); });
    }
    return nullptr;
  }

 private:
  // The packed key tiles of one call, 64-byte aligned (AttentionPacking), or
  // nullptr when out of memory. Per calling thread and reused across calls
  // and nodes: from the heap afresh, glibc would return a block this large
  // (up to kAttentionPackMaxBytes) to the system at every free and each call
  // would fault its pages in again. What a thread keeps is at most that size.
  static float* packing_buffer(size_t floats) {
    thread_local std::vector<float> buffer;
    try {
      if (buffer.size() < floats + 16) buffer.resize(floats + 16);
    } catch (const std::bad_alloc&) {
      return nullptr;
    }
    const uintptr_t at = reinterpret_cast<uintptr_t>(buffer.data());
    return buffer.data() + ((64 - at % 64) % 64) / sizeof(float);
  }

  // Decode shapes (fewer (head, query block) pairs than this many per core)
  // get their keys split, so a single query row still uses every thread.
  static constexpr unsigned kSplitTasksPerCore = 4;
  // Fewest query rows (Sq, or the group of a folded decode) for the bf16 block.
  static constexpr size_t kBf16MinRows = 2;

  float scale_;
  bool causal_;
  bool k_transposed_;
  AttentionBlockFn bf16_block_ = nullptr;  // precision "bfloat16" on a CPU with a bf16 engine
};

// Glu: act(A) * B elementwise, B of A's shape; without B, act(first half) *
// second half of each row of A's last axis (Y's last dimension is half A's).
class GluKernel : public QuakeKernel {
 public:
  GluKernel(GluActivation act, float alpha, const KernelTable* table, int order, ONNXTensorElementDataType type,
            std::string where)
      : QuakeKernel(table, order, type, std::move(where)), act_(act), alpha_(alpha) {}

 protected:
  OrtStatusPtr Run(Ort::KernelContext& ctx) override {
    Ort::ConstValue a = ctx.GetInput(0);
    Ort::ConstValue b{nullptr};
    if (ctx.GetInputCount() > 1) b = ctx.GetInput(1);
    const std::vector<int64_t> shape = a.GetTensorTypeAndShapeInfo().GetShape();
    if (b) {
      const std::vector<int64_t> b_shape = b.GetTensorTypeAndShapeInfo().GetShape();
      if (b_shape != shape) {
        return make_error(where_ + ": B must have A's shape; A is " + shape_text(shape) + ", B is " +
                          shape_text(b_shape));
      }
      Ort::UnownedValue y = ctx.GetOutput(0, shape);
      RunPaired(ctx, a.GetTensorRawData(), b.GetTensorRawData(), y.GetTensorMutableRawData(),
                a.GetTensorTypeAndShapeInfo().GetElementCount());
      return nullptr;
    }
    if (shape.empty() || shape.back() % 2 != 0) {
      return make_error(where_ + ": without B, A's last dimension must be even (it is cut in two halves); A is " +
                        shape_text(shape));
    }
    std::vector<int64_t> out_shape = shape;
    out_shape.back() /= 2;
    Ort::UnownedValue y = ctx.GetOutput(0, out_shape);
    RunHalves(ctx, a.GetTensorRawData(), y.GetTensorMutableRawData(), a.GetTensorTypeAndShapeInfo().GetElementCount(),
              static_cast<size_t>(out_shape.back()));
    return nullptr;
  }

 private:
  size_t ElementBytes() const { return half_ ? sizeof(uint16_t) : sizeof(float); }

  // y[0, n) = act(a) * b from raw buffers of the op's element type; float16
  // by the table's float16 kernel, or through float32 blocks.
  void Span(const void* a, const void* b, void* y, size_t n) const {
    if (!half_) {
      return kernels_.glu(static_cast<const float*>(a), static_cast<const float*>(b), static_cast<float*>(y), n, act_,
                          alpha_);
    }
    const uint16_t* ah = static_cast<const uint16_t*>(a);
    const uint16_t* bh = static_cast<const uint16_t*>(b);
    uint16_t* yh = static_cast<uint16_t*>(y);
    if (kernels_.half.glu != nullptr) return kernels_.half.glu(ah, bh, yh, n, act_, alpha_);
    float af[kHalfBlock], bf[kHalfBlock];
    for (size_t done = 0; done < n; done += kHalfBlock) {
      const size_t count = std::min(kHalfBlock, n - done);
      table_->f16_to_f32(ah + done, af, count);
      table_->f16_to_f32(bh + done, bf, count);
      kernels_.glu(af, bf, af, count, act_, alpha_);
      table_->f32_to_f16(af, yh + done, count);
    }
  }

  // B given: n elements in tasks of kGrain.
  void RunPaired(const Ort::KernelContext& ctx, const void* a, const void* b, void* y, size_t n) const {
    const char* ac = static_cast<const char*>(a);
    const char* bc = static_cast<const char*>(b);
    char* yc = static_cast<char*>(y);
    const size_t bytes = ElementBytes();
    parallel_tasks(ctx, (n + kGrain - 1) / kGrain, [&](size_t task) {
      const size_t begin = task * kGrain, count = std::min(kGrain, n - begin);
      Span(ac + begin * bytes, bc + begin * bytes, yc + begin * bytes, count);
    });
  }

  // Halves: rows of 2 h elements of A give rows of h of Y, whole rows per task.
  void RunHalves(const Ort::KernelContext& ctx, const void* a, void* y, size_t n, size_t h) const {
    if (n == 0) return;
    const size_t rows = n / (2 * h);
    const char* ac = static_cast<const char*>(a);
    char* yc = static_cast<char*>(y);
    const size_t bytes = ElementBytes();
    const size_t rows_per_task = std::max<size_t>(1, kGrain / (2 * h));
    // Y never shares A's buffer here (ORT reuses an input only for an output of
    // the same shape). Were it to, row r of Y would overwrite rows r / 2 ..
    // of A that other tasks still read; in row order on one thread every
    // element is read before it is written.
    const size_t tasks = y == a ? 1 : (rows + rows_per_task - 1) / rows_per_task;
    const size_t per_task = y == a ? rows : rows_per_task;
    parallel_tasks(ctx, tasks, [&](size_t task) {
      const size_t end = std::min(rows, (task + 1) * per_task);
      for (size_t r = task * per_task; r < end; ++r) {
        const char* row = ac + r * 2 * h * bytes;
        Span(row, row + h * bytes, yc + r * h * bytes, h);
      }
    });
  }

  GluActivation act_;
  float alpha_;
};

}  // namespace

OrtStatusPtr OpDef::InferShape(OrtShapeInferContext* context) const {
  if (kind_ == OpKind::kAttention) return InferAttentionShape(context);
  if (kind_ == OpKind::kGlu) return InferGluShape(context);
  try {
    Ort::ShapeInferContext ctx(&Ort::GetApi(), context);
    const Ort::ShapeInferContext::Shape& shape = ctx.GetInputShape(0);
    if (shape.empty()) return nullptr;  // unknown rank (or a scalar): nothing to add
    // Only fully static shapes are stated: ORT 1.32 drops an inferred shape
    // holding a named dimension, and a -1 would be taken as a real size (ORT
    // then warns at every run that the output does not match). The optimizer
    // writes value_info for symbolic shapes instead.
    for (const auto& d : shape) {
      if (!d.IsInt() || d.AsInt() < 0) return nullptr;
    }
    // ORT may ask the float registration about a float16 node: the element
    // type comes from the input, not from this definition.
    OrtTensorTypeAndShapeInfo* info = nullptr;
    Ort::ThrowOnError(Ort::GetApi().ShapeInferContext_GetInputTypeShape(context, 0, &info));
    const ONNXTensorElementDataType type = Ort::ConstTensorTypeAndShapeInfo(info).GetElementType();
    return ctx.SetOutputShape(0, shape, type).release();
  } catch (const std::exception& e) {
    return make_error(std::string("com.quake ") + name_ + " shape inference: " + e.what());
  }
}

// Y = [broadcast leading dims, Sq, Dv], stated only when every input's shape
// is fully static (as InferShape, for the same reasons); a shape the op would
// refuse is left to the run, which names it.
OrtStatusPtr OpDef::InferAttentionShape(OrtShapeInferContext* context) const {
  try {
    Ort::ShapeInferContext ctx(&Ort::GetApi(), context);
    const size_t inputs = ctx.GetInputCount();
    std::vector<int64_t> dims[4];
    for (size_t i = 0; i < inputs && i < 4; ++i) {
      const Ort::ShapeInferContext::Shape& shape = ctx.GetInputShape(i);
      if (shape.empty() && i < 3) return nullptr;  // unknown rank
      for (const auto& d : shape) {
        if (!d.IsInt() || d.AsInt() < 0) return nullptr;
        dims[i].push_back(d.AsInt());
      }
    }
    if (inputs == 4 && dims[3].empty()) return nullptr;  // a scalar mask and an unknown one look alike
    bool k_transposed = false;
    try {
      k_transposed = ctx.GetAttrInt("k_transposed") == 1;
    } catch (const Ort::Exception&) {  // absent: the default 0
    }
    AttentionShapes shapes{dims[0], dims[1], dims[2], dims[3], inputs == 4, k_transposed};
    AttentionLayout layout;
    if (!plan_attention_layout(shapes, &layout).empty()) return nullptr;
    OrtTensorTypeAndShapeInfo* info = nullptr;
    Ort::ThrowOnError(Ort::GetApi().ShapeInferContext_GetInputTypeShape(context, 0, &info));
    const ONNXTensorElementDataType type = Ort::ConstTensorTypeAndShapeInfo(info).GetElementType();
    Ort::ShapeInferContext::Shape out;
    for (int64_t d : layout.out_shape) out.emplace_back(d);
    return ctx.SetOutputShape(0, out, type).release();
  } catch (const std::exception& e) {
    return make_error(std::string("com.quake ") + name_ + " shape inference: " + e.what());
  }
}

// Y = A's shape with B, A's shape with the last dimension halved without it;
// stated only for fully static shapes (as InferShape). A shape the op would
// refuse (B not A's shape, an odd last dimension) is left to the run, which
// names it.
OrtStatusPtr OpDef::InferGluShape(OrtShapeInferContext* context) const {
  try {
    Ort::ShapeInferContext ctx(&Ort::GetApi(), context);
    const Ort::ShapeInferContext::Shape& shape = ctx.GetInputShape(0);
    if (shape.empty()) return nullptr;
    for (const auto& d : shape) {
      if (!d.IsInt() || d.AsInt() < 0) return nullptr;
    }
    Ort::ShapeInferContext::Shape out = shape;
    if (ctx.GetInputCount() > 1) {
      const Ort::ShapeInferContext::Shape& b = ctx.GetInputShape(1);
      if (b.size() != shape.size()) return nullptr;
      for (size_t i = 0; i < b.size(); ++i) {
        if (!b[i].IsInt() || b[i].AsInt() != shape[i].AsInt()) return nullptr;
      }
    } else {
      if (shape.back().AsInt() % 2 != 0) return nullptr;
      out.back() = Ort::ShapeInferContext::SymbolicInteger(shape.back().AsInt() / 2);
    }
    OrtTensorTypeAndShapeInfo* info = nullptr;
    Ort::ThrowOnError(Ort::GetApi().ShapeInferContext_GetInputTypeShape(context, 0, &info));
    const ONNXTensorElementDataType type = Ort::ConstTensorTypeAndShapeInfo(info).GetElementType();
    return ctx.SetOutputShape(0, out, type).release();
  } catch (const std::exception& e) {
    return make_error(std::string("com.quake ") + name_ + " shape inference: " + e.what());
  }
}

// ---------------------------------------------------------------------------
// Kernel creation: every attribute is checked here, so a bad model fails when
// the session is created, naming the node.

OrtStatusPtr OpDef::CreateKernelV2(const OrtApi&, const OrtKernelInfo* info, void** kernel) const {
  try {
    const std::string where = describe_node(name_, info);
    Attributes attrs(info, where);
    std::string error;

    const char* isa_error = nullptr;
    const KernelTable* table = select_kernels(&isa_error);
    if (table == nullptr) return make_error(where + ": " + isa_error);

    int64_t order = 2;
    if (!attrs.get_int("order", 2, &order, &error)) return make_error(error);
    if (order < 1 || order > 3) {
      return make_error(where + ": order must be 1, 2 or 3, got " + std::to_string(order));
    }
    const int ord = static_cast<int>(order);

    switch (kind_) {
      case OpKind::kExp:
      case OpKind::kSigmoid:
        *kernel = new ElementwiseKernel(kind_, 1.0f, table, ord, type_, where);
        return nullptr;
      case OpKind::kSilu: {
        float alpha = 1.0f;
        if (!attrs.get_float("alpha", 1.0f, &alpha, &error)) return make_error(error);
        if (!(alpha > 0.0f) || !std::isfinite(alpha)) {
          return make_error(where + ": alpha must be a positive finite float, got " + std::to_string(alpha));
        }
        *kernel = new ElementwiseKernel(kind_, alpha, table, ord, type_, where);
        return nullptr;
      }
      case OpKind::kGelu: {
        std::string approximate;
        if (!attrs.get_string("approximate", "none", &approximate, &error)) return make_error(error);
        if (approximate != "none" && approximate != "tanh") {
          return make_error(where + ": approximate must be \"none\" or \"tanh\", got \"" + approximate + "\"");
        }
        *kernel = new ElementwiseKernel(kind_, 1.0f, table, ord, type_, where);
        return nullptr;
      }
      case OpKind::kSoftmax:
      case OpKind::kLogSoftmax: {
        int64_t axis = -1;
        if (!attrs.get_int("axis", -1, &axis, &error)) return make_error(error);
        const int64_t rank = known_input_rank(info);
        if (rank > 0 && (axis < -rank || axis >= rank)) {
          return make_error(where + ": axis " + std::to_string(axis) + " is out of range for an input of rank " +
                            std::to_string(rank));
        }
        if (kind_ == OpKind::kSoftmax) {
          std::string method;
          int64_t bits = 3;
          float clip = 0.0f;
          if (!attrs.get_string("method", "quake", &method, &error) || !attrs.get_int("bits", 3, &bits, &error) ||
              !attrs.get_float("clip", 0.0f, &clip, &error)) {
            return make_error(error);
          }
          if (method != "quake" && method != "exaq") {
            return make_error(where + ": method must be \"quake\" or \"exaq\", got \"" + method + "\"");
          }
          if (bits < 2 || bits > 8) {
            return make_error(where + ": bits must be in 2..8, got " + std::to_string(bits));
          }
          if (!(clip <= 0.0f) || !std::isfinite(clip)) {
            return make_error(where + ": clip must be 0 (derive it) or a negative finite float, got " +
                              std::to_string(clip));
          }
          if (method == "exaq") {
            *kernel = new AxisKernel(ExaqParams{static_cast<int>(bits), clip}, axis, table, type_, where);
          } else {
            *kernel = new AxisKernel(&OrderKernels::softmax, axis, table, ord, type_, where);
          }
        } else {
          *kernel = new AxisKernel(&OrderKernels::logsoftmax, axis, table, ord, type_, where);
        }
        return nullptr;
      }
      case OpKind::kGlu: {
        std::string activation;
        if (!attrs.get_string("activation", "", &activation, &error)) return make_error(error);
        if (activation != "silu" && activation != "gelu" && activation != "gelu_tanh") {
          return make_error(where + ": attribute 'activation' must be \"silu\", \"gelu\" or \"gelu_tanh\", got " +
                            (activation.empty() ? std::string("none") : "\"" + activation + "\""));
        }
        // NaN marks an absent alpha: it belongs to silu only.
        float alpha = std::numeric_limits<float>::quiet_NaN();
        if (!attrs.get_float("alpha", alpha, &alpha, &error)) return make_error(error);
        const bool silu = activation == "silu";
        if (!silu && !std::isnan(alpha)) {
          return make_error(where + ": alpha applies to activation \"silu\" only, not \"" + activation + "\"");
        }
        if (std::isnan(alpha)) alpha = 1.0f;
        if (!(alpha > 0.0f) || !std::isfinite(alpha)) {
          return make_error(where + ": alpha must be a positive finite float, got " + std::to_string(alpha));
        }
        // Both GELU forms compute the tanh form, as com.quake Gelu does.
        *kernel = new GluKernel(silu ? GluActivation::kSilu : GluActivation::kGelu, alpha, table, ord, type_, where);
        return nullptr;
      }
      case OpKind::kAttention: {
        float scale = std::numeric_limits<float>::quiet_NaN();
        int64_t causal = 0, k_transposed = 0;
        std::string precision;
        if (!attrs.get_float("scale", scale, &scale, &error) || !attrs.get_int("causal", 0, &causal, &error) ||
            !attrs.get_int("k_transposed", 0, &k_transposed, &error) ||
            !attrs.get_string("precision", "float32", &precision, &error)) {
          return make_error(error);
        }
        if (!std::isfinite(scale)) {
          return make_error(where + ": attribute 'scale' is required and must be a finite float, got " +
                            std::to_string(scale));
        }
        if (causal != 0 && causal != 1) {
          return make_error(where + ": causal must be 0 or 1, got " + std::to_string(causal));
        }
        if (k_transposed != 0 && k_transposed != 1) {
          return make_error(where + ": k_transposed must be 0 or 1, got " + std::to_string(k_transposed));
        }
        if (precision != "float32" && precision != "bfloat16") {
          return make_error(where + ": precision must be \"float32\" or \"bfloat16\", got \"" + precision + "\"");
        }
        *kernel = new AttentionKernel(scale, causal == 1, k_transposed == 1, precision == "bfloat16", table, ord, type_,
                                      where);
        return nullptr;
      }
    }
    return make_error(where + ": unknown operator kind");
  } catch (const std::exception& e) {
    return make_error(std::string("com.quake ") + name_ + ": " + e.what());
  }
}

}  // namespace quake
