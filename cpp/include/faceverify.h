/* faceverify: the C API of the C++ face verification runner.
 *
 * Same contract and same files as the Python runtime (engine/): a model folder
 * from `python -m convert` (model.json + model.<precision>.onnx, optionally
 * model.<precision>.plan + .plan.json for TensorRT), the same decoding, face
 * detection and alignment, the same decision threshold.
 *
 * Errors: functions that can fail return NULL or -1 and leave a one-line
 * message naming the input and the problem in fv_last_error() (per thread).
 * No C++ exception crosses this boundary. A handle is used by one thread at a
 * time (as a Python backend is); separate handles may run in parallel.
 */
#ifndef FACEVERIFY_H
#define FACEVERIFY_H

#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define FV_VERSION "0.1.0"

/* Only the C API is exported from the shared library. */
#if defined(FV_BUILDING) && defined(__GNUC__)
#define FV_API __attribute__((visibility("default")))
#else
#define FV_API
#endif

typedef struct fv_handle fv_handle;

/* What the detector saw in one image (align: face models). */
typedef struct fv_face {
    int faces;            /* faces found; 0 when the model's align is "none" (no detection) */
    float box[4];         /* x0, y0, x1, y1 of the face used, in source pixels */
    float score;          /* detector score of that face */
    float size;           /* eye-to-mouth span in pixels */
    float keypoints[12];  /* (x, y) of: left eye, right eye, nose, mouth, left ear, right ear */
} fv_face;

typedef struct fv_result {
    double similarity; /* cosine similarity of the two embeddings, in [-1, 1] */
    int match;         /* 1 same person, 0 not (or a fake), -1 no threshold (none in model.json) */
    double threshold;  /* the decision threshold used; NaN when there is none */
} fv_result;

/* Open a model folder. model_dir NULL = the bundled model (engine/models of the
 * source tree this library was built from). backend: "auto" (or NULL), "openvino"
 * or "tensorrt"; auto takes TensorRT when this build has it, a plan is present
 * and a GPU answers, else OpenVINO. precision: "fp32", "fp16", "int8", "bf16"
 * (OpenVINO: the FP32 file with the bf16 hint) or NULL = the backend's
 * preferred file among those present (int8 first, as the Python runtime). */
FV_API fv_handle* fv_open(const char* model_dir, const char* backend, const char* precision);
FV_API void fv_close(fv_handle* handle);

/* What this library was built with, e.g. "faceverify 0.1.0 (backends: openvino, tensorrt)". */
FV_API const char* fv_build_info(void);

/* The last error on this thread ("" when none). Valid until the next call on this thread. */
FV_API const char* fv_last_error(void);

FV_API int fv_input_size(const fv_handle* handle);
FV_API int fv_embedding_dim(const fv_handle* handle);
FV_API const char* fv_backend(const fv_handle* handle);   /* "openvino" | "tensorrt" */
FV_API const char* fv_precision(const fv_handle* handle); /* the file that runs: "int8", ... */
FV_API const char* fv_device(const fv_handle* handle);    /* "cpu" | "cuda:0" */
FV_API const char* fv_model_dir(const fv_handle* handle);
FV_API const char* fv_choice_reason(const fv_handle* handle); /* why this backend and precision */
/* The worst cosine of the model's canary embeddings to the FP32 ones model.json stores (>= 0.98, or
 * fv_open refuses the folder); NaN when the folder records no canaries. */
FV_API double fv_canary_cosine(const fv_handle* handle);
/* 1 and *threshold set when model.json has a decision threshold, else 0. */
FV_API int fv_threshold(const fv_handle* handle, double* threshold);

/* Embed n image files: out receives n * fv_embedding_dim() floats (L2-normalised).
 * Returns 0 when every image was embedded; -1 otherwise, with the rows of the
 * images that failed set to NaN and fv_last_error() naming each ("path: reason; ..."). */
FV_API int fv_embed(fv_handle* handle, const char* const* paths, int n, float* out);
/* Embed one decoded RGB frame (8-bit, rows of `stride` bytes), e.g. from a camera. */
FV_API int fv_embed_rgb(fv_handle* handle, const uint8_t* rgb, int width, int height, int stride, float* out);
/* Embed n already prepared model inputs: uint8 NHWC RGB (n, S, S, 3), S = fv_input_size(). */
FV_API int fv_embed_crops(fv_handle* handle, const uint8_t* crops, int n, float* out);

/* Decode, detect and align one file into its model input: crop receives
 * S * S * 3 bytes (uint8 RGB HWC), face (may be NULL) what the detector saw.
 * The exact pixels fv_embed feeds the model, for checks and display. */
FV_API int fv_prepare(fv_handle* handle, const char* path, uint8_t* crop, fv_face* face);

/* After fv_embed: the face used for image `index` (0 on success, -1 if the
 * index is out of range or that image failed). */
FV_API int fv_last_face(const fv_handle* handle, int index, fv_face* face);
/* After fv_embed: warnings (several faces, a small face), one per line; "" when none. */
FV_API const char* fv_last_warnings(const fv_handle* handle);

/* Cosine similarity of two embeddings, clipped to [-1, 1]; NaN for a zero or non-finite one. */
FV_API double fv_similarity(const float* a, const float* b, int dim);
/* The realness coordinate of one embedding from this model: +1 real ... -1 fake (engine.api.realness);
 * NaN for a model without one. A refusal with a negative value on either side "looks fake". */
FV_API double fv_realness(const fv_handle* handle, const float* embedding);
/* Embed two image files and decide with the model's threshold. 0 on success, -1 on error. */
FV_API int fv_verify(fv_handle* handle, const char* path_a, const char* path_b, fv_result* result);

#ifdef __cplusplus
}
#endif

#endif /* FACEVERIFY_H */
