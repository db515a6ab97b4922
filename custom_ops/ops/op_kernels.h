// The com.quake operators on top of the kernel table: attribute validation,
// shapes, float16, and splitting work over ONNX Runtime's intra-op pool.
#pragma once

#define ORT_API_MANUAL_INIT
#include <onnxruntime_cxx_api.h>
#undef ORT_API_MANUAL_INIT

#include <string>

namespace quake {

enum class OpKind { kExp, kSigmoid, kSilu, kGelu, kSoftmax, kLogSoftmax, kAttention, kGlu };

// Base of every kernel object ORT creates; CustomOpBase calls ComputeV2.
struct Kernel {
  virtual ~Kernel() = default;
  virtual OrtStatusPtr ComputeV2(OrtKernelContext* context) = 0;
};

// One registered op: a kind and an element type (float or float16). The
// registration table in register.cc holds one instance per pair.
struct OpDef : Ort::CustomOpBase<OpDef, Kernel, /*WithStatus=*/true> {
  OpDef(const char* name, OpKind kind, ONNXTensorElementDataType type) : name_(name), kind_(kind), type_(type) {
    // Y has X's shape. Telling ORT so keeps its shape-dependent fusions
    // (SkipLayerNorm, MatMul+Add) working downstream of com.quake nodes.
    OrtCustomOp::InferOutputShapeFn = [](const OrtCustomOp* op, OrtShapeInferContext* ctx) -> OrtStatusPtr {
      return static_cast<const OpDef*>(op)->InferShape(ctx);
    };
    // Y may take X's buffer when X has no other use, as ORT lets its own
    // Softmax and elementwise ops do. On rows beyond the caches this is what
    // decides the speed: out of place, every output line is first read from
    // memory (54 MB more per Whisper attention softmax) and the arena holds
    // one more large buffer. Every kernel reads an element before it writes
    // it (kernels.h; in-place results are tested equal to out-of-place ones).
    OrtCustomOp::GetMayInplace = [](int** input_index, int** output_index) -> size_t {
      *input_index = new int[1]{0};
      *output_index = new int[1]{0};
      return 1;
    };
    // Attention's Y is not Q's shape in general, and its rows are written
    // while other tasks still read Q and K: never in place.
    if (kind == OpKind::kAttention) {
      OrtCustomOp::GetMayInplace = [](int** input_index, int** output_index) -> size_t {
        *input_index = nullptr;
        *output_index = nullptr;
        return 0;
      };
    }
    // Glu's Y may take A's or B's buffer (same shape when B is given). ORT
    // reuses one only when its static shape equals Y's, never in the halves
    // form, whose Y is half of A.
    if (kind == OpKind::kGlu) {
      OrtCustomOp::GetMayInplace = [](int** input_index, int** output_index) -> size_t {
        *input_index = new int[2]{0, 1};
        *output_index = new int[2]{0, 0};
        return 2;
      };
    }
    OrtCustomOp::ReleaseMayInplace = [](int* input_index, int* output_index) {
      delete[] input_index;
      delete[] output_index;
    };
  }

  const char* GetName() const { return name_; }
  // Gelu: X, optional B. Glu: A, optional B. Attention: Q, K, V, optional M.
  size_t GetInputTypeCount() const {
    return kind_ == OpKind::kAttention ? 4 : (kind_ == OpKind::kGelu || kind_ == OpKind::kGlu ? 2 : 1);
  }
  ONNXTensorElementDataType GetInputType(size_t) const { return type_; }
  size_t GetOutputTypeCount() const { return 1; }
  ONNXTensorElementDataType GetOutputType(size_t) const { return type_; }
  OrtCustomOpInputOutputCharacteristic GetInputCharacteristic(size_t index) const {
    return index + 1 == GetInputTypeCount() && index > 0 ? OrtCustomOpInputOutputCharacteristic::INPUT_OUTPUT_OPTIONAL
                                                         : OrtCustomOpInputOutputCharacteristic::INPUT_OUTPUT_REQUIRED;
  }
  OrtStatusPtr CreateKernelV2(const OrtApi& api, const OrtKernelInfo* info, void** kernel) const;
  OrtStatusPtr InferShape(OrtShapeInferContext* context) const;
  OrtStatusPtr InferAttentionShape(OrtShapeInferContext* context) const;
  OrtStatusPtr InferGluShape(OrtShapeInferContext* context) const;

 private:
  const char* name_;
  OpKind kind_;
  ONNXTensorElementDataType type_;
};

}  // namespace quake
