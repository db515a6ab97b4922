// test.quake.Twice: Y = 2 X for float tensors of any shape. The smallest
// custom op there is, so the tests can load a model that needs a library
// other than com.quake's and onnxruntime-extensions'.
#define ORT_API_MANUAL_INIT
#include <onnxruntime_cxx_api.h>
#undef ORT_API_MANUAL_INIT

#include <cstdint>
#include <mutex>
#include <vector>

namespace {

struct TwiceKernel {
  TwiceKernel(const OrtApi&, const OrtKernelInfo*) {}
  void Compute(OrtKernelContext* raw) {
    Ort::KernelContext context(raw);
    Ort::ConstValue x = context.GetInput(0);
    std::vector<int64_t> shape = x.GetTensorTypeAndShapeInfo().GetShape();
    Ort::UnownedValue y = context.GetOutput(0, shape);
    const size_t n = x.GetTensorTypeAndShapeInfo().GetElementCount();
    const float* in = x.GetTensorData<float>();
    float* out = y.GetTensorMutableData<float>();
    for (size_t i = 0; i < n; ++i) out[i] = 2.0f * in[i];
  }
};

struct TwiceOp : Ort::CustomOpBase<TwiceOp, TwiceKernel> {
  void* CreateKernel(const OrtApi& api, const OrtKernelInfo* info) const { return new TwiceKernel(api, info); }
  const char* GetName() const { return "Twice"; }
  size_t GetInputTypeCount() const { return 1; }
  ONNXTensorElementDataType GetInputType(size_t) const { return ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT; }
  size_t GetOutputTypeCount() const { return 1; }
  ONNXTensorElementDataType GetOutputType(size_t) const { return ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT; }
};

TwiceOp g_twice;
std::mutex g_mutex;
std::vector<Ort::CustomOpDomain> g_domains;  // ORT does not own a custom-op domain

}  // namespace

extern "C" __attribute__((visibility("default"))) OrtStatus* ORT_API_CALL
RegisterCustomOps(OrtSessionOptions* options, const OrtApiBase* api_base) {
  const OrtApi* api = api_base->GetApi(ORT_API_VERSION);
  if (api == nullptr) return nullptr;
  Ort::InitApi(api);
  try {
    Ort::CustomOpDomain domain("test.quake");
    domain.Add(&g_twice);
    Ort::UnownedSessionOptions(options).Add(domain);
    std::lock_guard<std::mutex> lock(g_mutex);
    g_domains.push_back(std::move(domain));
    return nullptr;
  } catch (const std::exception& e) {
    return api->CreateStatus(ORT_FAIL, e.what());
  }
}
