/*
 * Fused element-wise kernels for the frozen-ViT training path (lib/model/vit_fast.ts), registered
 * as TensorFlow ops through TensorFlow's stable C kernel API and loaded into the process's
 * libtensorflow with TF_LoadLibrary (lib/native.ts). `deno task setup` compiles this file; when it
 * cannot, the toolkit computes the same values with TensorFlow's own ops.
 *
 *   DeerGelu(z) -> (act, gate):  gate = 1 + erf z, act = z * gate
 *       (exact GELU in the scaled form of vit_fast.ts: a*Phi(a) = act / sqrt(2) with z = a / sqrt(2))
 *   DeerGeluGrad(d, z, gate) -> dz = d * (gate + z * (2/sqrt(pi)) * exp(-z^2))
 *   DeerLayerNorm(x [rows, w], gamma [w], beta [w]; epsilon) -> (y, mean [rows], rstd [rows])
 *       y = (x - mean) * rstd * gamma + beta, biased variance (as PyTorch)
 *   DeerResidual(a [rows, w], b [rows, w], bias [w]; scale) -> a + (scale * b + bias)
 *       (a residual connection with its branch's bias and scale; scale = 1 multiplies exactly)
 *   DeerSoftmaxGrad(p, dp) -> ds = p * (dp - sum(dp * p)), the sums over the last axis
 *       (the gradient at the scores of p = softmax(scores) given dp at p)
 *   DeerLayerNormGrad(dy, x, mean, rstd, gamma) -> dx
 *       = rstd * (g - mean(g) - xhat * mean(g * xhat)), g = dy * gamma, xhat = (x - mean) * rstd
 *
 * GELU: one pass over the data instead of three (forward) and six (backward) TensorFlow kernels;
 * the loops use glibc's vector erf/exp (libmvec, AVX2) when the CPU has AVX2, else the scalar
 * ones. LayerNorm: one kernel each way instead of FusedBatchNorm plus the affine and reshapes.
 * No -ffast-math: nothing here may change the floating-point environment of the process.
 */
#include <immintrin.h>
#include <math.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>

/* --- The TensorFlow C API functions used (tensorflow/c/tf_status.h, tf_tensor.h, kernels.h,
 * ops.h); declared here because the TensorFlow wheels' kernels.h includes a header they do not
 * ship. All are part of the C API of TensorFlow >= 2.5. */
typedef struct TF_Status TF_Status;
typedef struct TF_Tensor TF_Tensor;
typedef struct TF_OpKernelConstruction TF_OpKernelConstruction;
typedef struct TF_OpKernelContext TF_OpKernelContext;
typedef struct TF_KernelBuilder TF_KernelBuilder;
typedef struct TF_OpDefinitionBuilder TF_OpDefinitionBuilder;
typedef struct TF_ShapeInferenceContext TF_ShapeInferenceContext;
typedef struct TF_ShapeHandle TF_ShapeHandle;
enum { DEER_TF_OK = 0, DEER_TF_INVALID_ARGUMENT = 3, DEER_TF_FLOAT = 1 };

extern TF_Status* TF_NewStatus(void);
extern void TF_DeleteStatus(TF_Status*);
extern int TF_GetCode(const TF_Status*);
extern void TF_SetStatus(TF_Status*, int, const char*);
extern int TF_NumDims(const TF_Tensor*);
extern int64_t TF_Dim(const TF_Tensor*, int);
extern int64_t TF_TensorElementCount(const TF_Tensor*);
extern void* TF_TensorData(const TF_Tensor*);
extern void TF_DeleteTensor(TF_Tensor*);
extern TF_KernelBuilder* TF_NewKernelBuilder(const char*, const char*,
                                             void* (*)(TF_OpKernelConstruction*),
                                             void (*)(void*, TF_OpKernelContext*),
                                             void (*)(void*));
extern void TF_RegisterKernelBuilder(const char*, TF_KernelBuilder*, TF_Status*);
extern void TF_GetInput(TF_OpKernelContext*, int, TF_Tensor**, TF_Status*);
extern TF_Tensor* TF_AllocateOutput(TF_OpKernelContext*, int, int, const int64_t*, int, size_t,
                                    TF_Status*);
extern void TF_OpKernelContext_Failure(TF_OpKernelContext*, TF_Status*);
extern TF_OpDefinitionBuilder* TF_NewOpDefinitionBuilder(const char*);
extern void TF_OpDefinitionBuilderAddInput(TF_OpDefinitionBuilder*, const char*);
extern void TF_OpDefinitionBuilderAddOutput(TF_OpDefinitionBuilder*, const char*);
extern void TF_OpDefinitionBuilderAddAttr(TF_OpDefinitionBuilder*, const char*);
extern void TF_OpKernelConstruction_GetAttrFloat(TF_OpKernelConstruction*, const char*, float*,
                                                 TF_Status*);
extern void TF_OpKernelConstruction_Failure(TF_OpKernelConstruction*, TF_Status*);
extern void TF_OpDefinitionBuilderSetShapeInferenceFunction(
    TF_OpDefinitionBuilder*, void (*)(TF_ShapeInferenceContext*, TF_Status*));
extern void TF_RegisterOpDefinition(TF_OpDefinitionBuilder*, TF_Status*);
extern TF_ShapeHandle* TF_NewShapeHandle(void);
extern void TF_ShapeInferenceContextGetInput(TF_ShapeInferenceContext*, int, TF_ShapeHandle*,
                                             TF_Status*);
extern void TF_ShapeInferenceContextSetOutput(TF_ShapeInferenceContext*, int, TF_ShapeHandle*,
                                              TF_Status*);
extern void TF_DeleteShapeHandle(TF_ShapeHandle*);

/* --- glibc's vector math (libmvec, glibc >= 2.35 for erf). */
extern __m256 _ZGVdN8v_erff(__m256);
extern __m256 _ZGVdN8v_expf(__m256);

static const float TWO_OVER_SQRT_PI = 1.12837916709551257390f;

static int has_avx2(void) {
  static int cached = -1;
  if (cached < 0) cached = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  return cached;
}

/* Whether the fast (vector) loops run on this CPU; lib/native.ts uses the ops only then. */
int deer_ops_vectorized(void) { return has_avx2(); }

__attribute__((target("avx2,fma"))) static int64_t gelu_avx2(const float* z, float* act,
                                                             float* gate, int64_t n) {
  const __m256 one = _mm256_set1_ps(1.0f);
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) {
    __m256 zi = _mm256_loadu_ps(z + i);
    __m256 g = _mm256_add_ps(one, _ZGVdN8v_erff(zi));
    _mm256_storeu_ps(gate + i, g);
    _mm256_storeu_ps(act + i, _mm256_mul_ps(zi, g));
  }
  return i;
}

__attribute__((target("avx2,fma"))) static int64_t gelu_grad_avx2(const float* d, const float* z,
                                                                  const float* gate, float* dz,
                                                                  int64_t n) {
  const __m256 c = _mm256_set1_ps(TWO_OVER_SQRT_PI);
  const __m256 zero = _mm256_setzero_ps();
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) {
    __m256 zi = _mm256_loadu_ps(z + i);
    __m256 e = _ZGVdN8v_expf(_mm256_sub_ps(zero, _mm256_mul_ps(zi, zi)));
    __m256 slope = _mm256_add_ps(_mm256_loadu_ps(gate + i), _mm256_mul_ps(_mm256_mul_ps(zi, c), e));
    _mm256_storeu_ps(dz + i, _mm256_mul_ps(_mm256_loadu_ps(d + i), slope));
  }
  return i;
}

/* --- Kernels */

static void* no_state(TF_OpKernelConstruction* ctx) {
  (void)ctx;
  return NULL;
}
static void no_delete(void* state) { (void)state; }

/* Output `index` shaped like `like`; NULL (and the context failed) when allocation fails. */
static TF_Tensor* output_like(TF_OpKernelContext* ctx, int index, const TF_Tensor* like,
                              TF_Status* s) {
  int rank = TF_NumDims(like);
  int64_t dims[16];
  if (rank > 16) return NULL;
  for (int k = 0; k < rank; k++) dims[k] = TF_Dim(like, k);
  TF_Tensor* t = TF_AllocateOutput(ctx, index, DEER_TF_FLOAT, dims, rank,
                                   (size_t)TF_TensorElementCount(like) * sizeof(float), s);
  if (TF_GetCode(s) != DEER_TF_OK) {
    TF_OpKernelContext_Failure(ctx, s);
    return NULL;
  }
  return t;
}

static void gelu_compute(void* state, TF_OpKernelContext* ctx) {
  (void)state;
  TF_Status* s = TF_NewStatus();
  TF_Tensor *z = NULL, *act = NULL, *gate = NULL;
  TF_GetInput(ctx, 0, &z, s);
  if (TF_GetCode(s) != DEER_TF_OK) {
    TF_OpKernelContext_Failure(ctx, s);
    goto done;
  }
  act = output_like(ctx, 0, z, s);
  if (act == NULL) goto done;
  gate = output_like(ctx, 1, z, s);
  if (gate == NULL) goto done;
  {
    const float* zp = (const float*)TF_TensorData(z);
    float* ap = (float*)TF_TensorData(act);
    float* gp = (float*)TF_TensorData(gate);
    int64_t n = TF_TensorElementCount(z);
    int64_t i = has_avx2() ? gelu_avx2(zp, ap, gp, n) : 0;
    for (; i < n; i++) {
      float g = 1.0f + erff(zp[i]);
      gp[i] = g;
      ap[i] = zp[i] * g;
    }
  }
done:
  if (z) TF_DeleteTensor(z);
  if (act) TF_DeleteTensor(act);
  if (gate) TF_DeleteTensor(gate);
  TF_DeleteStatus(s);
}

static void gelu_grad_compute(void* state, TF_OpKernelContext* ctx) {
  (void)state;
  TF_Status* s = TF_NewStatus();
  TF_Tensor *d = NULL, *z = NULL, *gate = NULL, *dz = NULL;
  TF_GetInput(ctx, 0, &d, s);
  if (TF_GetCode(s) == DEER_TF_OK) TF_GetInput(ctx, 1, &z, s);
  if (TF_GetCode(s) == DEER_TF_OK) TF_GetInput(ctx, 2, &gate, s);
  if (TF_GetCode(s) != DEER_TF_OK) {
    TF_OpKernelContext_Failure(ctx, s);
    goto done;
  }
  {
    int64_t n = TF_TensorElementCount(z);
    if (TF_TensorElementCount(d) != n || TF_TensorElementCount(gate) != n) {
      TF_SetStatus(s, DEER_TF_INVALID_ARGUMENT, "DeerGeluGrad: d, z and gate must have one size");
      TF_OpKernelContext_Failure(ctx, s);
      goto done;
    }
    dz = output_like(ctx, 0, z, s);
    if (dz == NULL) goto done;
    const float* dp = (const float*)TF_TensorData(d);
    const float* zp = (const float*)TF_TensorData(z);
    const float* gp = (const float*)TF_TensorData(gate);
    float* op = (float*)TF_TensorData(dz);
    int64_t i = has_avx2() ? gelu_grad_avx2(dp, zp, gp, op, n) : 0;
    for (; i < n; i++) {
      float zi = zp[i];
      op[i] = dp[i] * (gp[i] + zi * TWO_OVER_SQRT_PI * expf(-zi * zi));
    }
  }
done:
  if (d) TF_DeleteTensor(d);
  if (z) TF_DeleteTensor(z);
  if (gate) TF_DeleteTensor(gate);
  if (dz) TF_DeleteTensor(dz);
  TF_DeleteStatus(s);
}

/* --- LayerNorm over the last axis */

/* The state of a kernel with one float attribute (LayerNorm's epsilon, DeerResidual's scale). */
typedef struct {
  float value;
} FloatAttr;

static void* float_attr_create(TF_OpKernelConstruction* ctx, const char* name) {
  FloatAttr* st = (FloatAttr*)malloc(sizeof(FloatAttr));
  TF_Status* s = TF_NewStatus();
  if (st != NULL) {
    TF_OpKernelConstruction_GetAttrFloat(ctx, name, &st->value, s);
    if (TF_GetCode(s) != DEER_TF_OK) {
      TF_OpKernelConstruction_Failure(ctx, s);
      free(st);
      st = NULL;
    }
  }
  TF_DeleteStatus(s);
  return st;
}
static void* epsilon_create(TF_OpKernelConstruction* ctx) {
  return float_attr_create(ctx, "epsilon");
}
static void* scale_create(TF_OpKernelConstruction* ctx) { return float_attr_create(ctx, "scale"); }
static void float_attr_delete(void* state) { free(state); }

static TF_Tensor* output_dims(TF_OpKernelContext* ctx, int index, const int64_t* dims, int rank,
                              int64_t count, TF_Status* s) {
  TF_Tensor* t =
      TF_AllocateOutput(ctx, index, DEER_TF_FLOAT, dims, rank, (size_t)count * sizeof(float), s);
  if (TF_GetCode(s) != DEER_TF_OK) {
    TF_OpKernelContext_Failure(ctx, s);
    return NULL;
  }
  return t;
}

static void fail(TF_OpKernelContext* ctx, TF_Status* s, const char* message) {
  TF_SetStatus(s, DEER_TF_INVALID_ARGUMENT, message);
  TF_OpKernelContext_Failure(ctx, s);
}

static void layer_norm_compute(void* state, TF_OpKernelContext* ctx) {
  const float eps = ((FloatAttr*)state)->value;
  TF_Status* s = TF_NewStatus();
  TF_Tensor *x = NULL, *gamma = NULL, *beta = NULL, *y = NULL, *mean = NULL, *rstd = NULL;
  TF_GetInput(ctx, 0, &x, s);
  if (TF_GetCode(s) == DEER_TF_OK) TF_GetInput(ctx, 1, &gamma, s);
  if (TF_GetCode(s) == DEER_TF_OK) TF_GetInput(ctx, 2, &beta, s);
  if (TF_GetCode(s) != DEER_TF_OK) {
    TF_OpKernelContext_Failure(ctx, s);
    goto done;
  }
  if (TF_NumDims(x) != 2) {
    fail(ctx, s, "DeerLayerNorm: x must be [rows, width]");
    goto done;
  }
  {
    const int64_t rows = TF_Dim(x, 0), w = TF_Dim(x, 1);
    if (TF_TensorElementCount(gamma) != w || TF_TensorElementCount(beta) != w) {
      fail(ctx, s, "DeerLayerNorm: gamma and beta must have the width of x");
      goto done;
    }
    const int64_t ydims[2] = {rows, w}, rdims[1] = {rows};
    if (!(y = output_dims(ctx, 0, ydims, 2, rows * w, s))) goto done;
    if (!(mean = output_dims(ctx, 1, rdims, 1, rows, s))) goto done;
    if (!(rstd = output_dims(ctx, 2, rdims, 1, rows, s))) goto done;
    const float* xp = (const float*)TF_TensorData(x);
    const float* gp = (const float*)TF_TensorData(gamma);
    const float* bp = (const float*)TF_TensorData(beta);
    float* yp = (float*)TF_TensorData(y);
    float* mp = (float*)TF_TensorData(mean);
    float* rp = (float*)TF_TensorData(rstd);
    for (int64_t r = 0; r < rows; r++) {
      const float* xr = xp + r * w;
      float* yr = yp + r * w;
      float sum = 0.0f;
      for (int64_t j = 0; j < w; j++) sum += xr[j];
      const float m = sum / (float)w;
      float sq = 0.0f;
      for (int64_t j = 0; j < w; j++) {
        const float c = xr[j] - m;
        sq += c * c;
      }
      const float rs = 1.0f / sqrtf(sq / (float)w + eps);
      for (int64_t j = 0; j < w; j++) yr[j] = (xr[j] - m) * rs * gp[j] + bp[j];
      mp[r] = m;
      rp[r] = rs;
    }
  }
done:
  if (x) TF_DeleteTensor(x);
  if (gamma) TF_DeleteTensor(gamma);
  if (beta) TF_DeleteTensor(beta);
  if (y) TF_DeleteTensor(y);
  if (mean) TF_DeleteTensor(mean);
  if (rstd) TF_DeleteTensor(rstd);
  TF_DeleteStatus(s);
}

static void layer_norm_grad_compute(void* state, TF_OpKernelContext* ctx) {
  (void)state;
  TF_Status* s = TF_NewStatus();
  TF_Tensor* in[5] = {NULL, NULL, NULL, NULL, NULL}; /* dy, x, mean, rstd, gamma */
  TF_Tensor* dx = NULL;
  for (int i = 0; i < 5 && TF_GetCode(s) == DEER_TF_OK; i++) TF_GetInput(ctx, i, &in[i], s);
  if (TF_GetCode(s) != DEER_TF_OK) {
    TF_OpKernelContext_Failure(ctx, s);
    goto done;
  }
  if (TF_NumDims(in[1]) != 2) {
    fail(ctx, s, "DeerLayerNormGrad: x must be [rows, width]");
    goto done;
  }
  {
    const int64_t rows = TF_Dim(in[1], 0), w = TF_Dim(in[1], 1);
    if (TF_TensorElementCount(in[0]) != rows * w || TF_TensorElementCount(in[2]) != rows ||
        TF_TensorElementCount(in[3]) != rows || TF_TensorElementCount(in[4]) != w) {
      fail(ctx, s, "DeerLayerNormGrad: dy, x [rows, width], mean, rstd [rows], gamma [width]");
      goto done;
    }
    const int64_t dims[2] = {rows, w};
    if (!(dx = output_dims(ctx, 0, dims, 2, rows * w, s))) goto done;
    const float* dyp = (const float*)TF_TensorData(in[0]);
    const float* xp = (const float*)TF_TensorData(in[1]);
    const float* mp = (const float*)TF_TensorData(in[2]);
    const float* rp = (const float*)TF_TensorData(in[3]);
    const float* gp = (const float*)TF_TensorData(in[4]);
    float* out = (float*)TF_TensorData(dx);
    for (int64_t r = 0; r < rows; r++) {
      const float* dyr = dyp + r * w;
      const float* xr = xp + r * w;
      float* o = out + r * w;
      const float m = mp[r], rs = rp[r];
      float sg = 0.0f, sgx = 0.0f;
      for (int64_t j = 0; j < w; j++) {
        const float g = dyr[j] * gp[j];
        sg += g;
        sgx += g * ((xr[j] - m) * rs);
      }
      const float mg = sg / (float)w, mgx = sgx / (float)w;
      for (int64_t j = 0; j < w; j++) {
        const float xhat = (xr[j] - m) * rs;
        o[j] = rs * (dyr[j] * gp[j] - mg - xhat * mgx);
      }
    }
  }
done:
  for (int i = 0; i < 5; i++)
    if (in[i]) TF_DeleteTensor(in[i]);
  if (dx) TF_DeleteTensor(dx);
  TF_DeleteStatus(s);
}

static void residual_compute(void* state, TF_OpKernelContext* ctx) {
  const float scale = ((FloatAttr*)state)->value;
  TF_Status* s = TF_NewStatus();
  TF_Tensor *a = NULL, *b = NULL, *bias = NULL, *out = NULL;
  TF_GetInput(ctx, 0, &a, s);
  if (TF_GetCode(s) == DEER_TF_OK) TF_GetInput(ctx, 1, &b, s);
  if (TF_GetCode(s) == DEER_TF_OK) TF_GetInput(ctx, 2, &bias, s);
  if (TF_GetCode(s) != DEER_TF_OK) {
    TF_OpKernelContext_Failure(ctx, s);
    goto done;
  }
  {
    const int64_t count = TF_TensorElementCount(a);
    const int64_t w = TF_TensorElementCount(bias);
    if (TF_NumDims(a) != 2 || TF_TensorElementCount(b) != count || TF_Dim(a, 1) != w) {
      fail(ctx, s, "DeerResidual: a, b [rows, width] and bias [width]");
      goto done;
    }
    if (!(out = output_like(ctx, 0, a, s))) goto done;
    const float* ap = (const float*)TF_TensorData(a);
    const float* bp = (const float*)TF_TensorData(b);
    const float* cp = (const float*)TF_TensorData(bias);
    float* op = (float*)TF_TensorData(out);
    for (int64_t r = 0; w > 0 && r < count / w; r++) {
      const float* ar = ap + r * w;
      const float* br = bp + r * w;
      float* o = op + r * w;
      for (int64_t j = 0; j < w; j++) o[j] = ar[j] + (scale * br[j] + cp[j]);
    }
  }
done:
  if (a) TF_DeleteTensor(a);
  if (b) TF_DeleteTensor(b);
  if (bias) TF_DeleteTensor(bias);
  if (out) TF_DeleteTensor(out);
  TF_DeleteStatus(s);
}

static void softmax_grad_compute(void* state, TF_OpKernelContext* ctx) {
  (void)state;
  TF_Status* s = TF_NewStatus();
  TF_Tensor *p = NULL, *dp = NULL, *ds = NULL;
  TF_GetInput(ctx, 0, &p, s);
  if (TF_GetCode(s) == DEER_TF_OK) TF_GetInput(ctx, 1, &dp, s);
  if (TF_GetCode(s) != DEER_TF_OK) {
    TF_OpKernelContext_Failure(ctx, s);
    goto done;
  }
  {
    const int rank = TF_NumDims(p);
    const int64_t count = TF_TensorElementCount(p);
    if (rank < 1 || TF_TensorElementCount(dp) != count) {
      fail(ctx, s, "DeerSoftmaxGrad: p and dp must have one shape");
      goto done;
    }
    const int64_t n = TF_Dim(p, rank - 1);
    if (!(ds = output_like(ctx, 0, p, s))) goto done;
    const float* pp = (const float*)TF_TensorData(p);
    const float* dpp = (const float*)TF_TensorData(dp);
    float* out = (float*)TF_TensorData(ds);
    for (int64_t r = 0; n > 0 && r < count / n; r++) {
      const float* pr = pp + r * n;
      const float* dr = dpp + r * n;
      float* o = out + r * n;
      float dot = 0.0f;
      for (int64_t j = 0; j < n; j++) dot += dr[j] * pr[j];
      for (int64_t j = 0; j < n; j++) o[j] = pr[j] * (dr[j] - dot);
    }
  }
done:
  if (p) TF_DeleteTensor(p);
  if (dp) TF_DeleteTensor(dp);
  if (ds) TF_DeleteTensor(ds);
  TF_DeleteStatus(s);
}

static void layer_norm_shape(TF_ShapeInferenceContext* ctx, TF_Status* s) {
  /* y has the shape of x; mean and rstd are left to the kernel (TensorFlow infers them at run
   * time, which is all eager execution needs). */
  TF_ShapeHandle* h = TF_NewShapeHandle();
  TF_ShapeInferenceContextGetInput(ctx, 0, h, s);
  TF_ShapeInferenceContextSetOutput(ctx, 0, h, s);
  TF_DeleteShapeHandle(h);
}

/* Every output has the shape of input 0. */
static void shape_of_first(TF_ShapeInferenceContext* ctx, TF_Status* s, int outputs) {
  TF_ShapeHandle* h = TF_NewShapeHandle();
  TF_ShapeInferenceContextGetInput(ctx, 0, h, s);
  for (int i = 0; i < outputs; i++) TF_ShapeInferenceContextSetOutput(ctx, i, h, s);
  TF_DeleteShapeHandle(h);
}
static void one_output_shape(TF_ShapeInferenceContext* ctx, TF_Status* s) {
  shape_of_first(ctx, s, 1);
}
static void two_outputs_shape(TF_ShapeInferenceContext* ctx, TF_Status* s) {
  shape_of_first(ctx, s, 2);
}

static void register_op(const char* name, const char* const* inputs, int nin,
                        const char* const* outputs, int nout, const char* attr,
                        void (*shape)(TF_ShapeInferenceContext*, TF_Status*),
                        void* (*create)(TF_OpKernelConstruction*),
                        void (*compute)(void*, TF_OpKernelContext*), void (*destroy)(void*)) {
  TF_Status* s = TF_NewStatus();
  TF_OpDefinitionBuilder* b = TF_NewOpDefinitionBuilder(name);
  for (int i = 0; i < nin; i++) TF_OpDefinitionBuilderAddInput(b, inputs[i]);
  for (int i = 0; i < nout; i++) TF_OpDefinitionBuilderAddOutput(b, outputs[i]);
  if (attr != NULL) TF_OpDefinitionBuilderAddAttr(b, attr);
  TF_OpDefinitionBuilderSetShapeInferenceFunction(b, shape);
  TF_RegisterOpDefinition(b, s);
  if (TF_GetCode(s) == DEER_TF_OK) {
    TF_KernelBuilder* k = TF_NewKernelBuilder(name, "CPU", create, compute, destroy);
    TF_RegisterKernelBuilder(name, k, s);
  }
  TF_DeleteStatus(s);
}

/* TF_LoadLibrary runs this when it loads the library. */
__attribute__((constructor)) static void register_ops(void) {
  static const char* const gelu_in[] = {"z: float"};
  static const char* const gelu_out[] = {"act: float", "gate: float"};
  register_op("DeerGelu", gelu_in, 1, gelu_out, 2, NULL, &two_outputs_shape, &no_state,
              &gelu_compute, &no_delete);
  static const char* const grad_in[] = {"d: float", "z: float", "gate: float"};
  static const char* const grad_out[] = {"dz: float"};
  register_op("DeerGeluGrad", grad_in, 3, grad_out, 1, NULL, &one_output_shape, &no_state,
              &gelu_grad_compute, &no_delete);
  static const char* const ln_in[] = {"x: float", "gamma: float", "beta: float"};
  static const char* const ln_out[] = {"y: float", "mean: float", "rstd: float"};
  register_op("DeerLayerNorm", ln_in, 3, ln_out, 3, "epsilon: float", &layer_norm_shape,
              &epsilon_create, &layer_norm_compute, &float_attr_delete);
  static const char* const res_in[] = {"a: float", "b: float", "bias: float"};
  static const char* const res_out[] = {"out: float"};
  register_op("DeerResidual", res_in, 3, res_out, 1, "scale: float", &one_output_shape,
              &scale_create, &residual_compute, &float_attr_delete);
  static const char* const sg_in[] = {"p: float", "dp: float"};
  static const char* const sg_out[] = {"ds: float"};
  register_op("DeerSoftmaxGrad", sg_in, 2, sg_out, 1, NULL, &one_output_shape, &no_state,
              &softmax_grad_compute, &no_delete);
  static const char* const lng_in[] = {"dy: float", "x: float", "mean: float", "rstd: float",
                                       "gamma: float"};
  static const char* const lng_out[] = {"dx: float"};
  register_op("DeerLayerNormGrad", lng_in, 5, lng_out, 1, NULL, &one_output_shape, &no_state,
              &layer_norm_grad_compute, &no_delete);
}
