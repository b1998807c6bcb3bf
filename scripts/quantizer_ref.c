/* Runs llama.cpp's own quantizers on raw float32 input: the harness behind
 * scripts/make_quantizer_refs.py (which compiles it against ggml-base).
 *
 * Usage: quantizer_ref TYPE N_PER_ROW IN.f32 OUT.bin
 *   TYPE: q8_0 | q4_0 | q4_1 | q4_k. IN.f32 holds rows of N_PER_ROW little-endian floats.
 *
 * It calls ggml_quantize_chunk with no importance matrix, the call llama-quantize makes for
 * every tensor, which for these types runs ggml's quantize_row_*_ref.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ggml.h"

static enum ggml_type parse_type(const char *s) {
    if (strcmp(s, "q8_0") == 0) return GGML_TYPE_Q8_0;
    if (strcmp(s, "q4_0") == 0) return GGML_TYPE_Q4_0;
    if (strcmp(s, "q4_1") == 0) return GGML_TYPE_Q4_1;
    if (strcmp(s, "q4_k") == 0) return GGML_TYPE_Q4_K;
    fprintf(stderr, "unknown type %s\n", s);
    exit(2);
}

int main(int argc, char **argv) {
    if (argc != 5) {
        fprintf(stderr, "usage: %s TYPE N_PER_ROW IN.f32 OUT.bin\n", argv[0]);
        return 2;
    }
    const enum ggml_type type = parse_type(argv[1]);
    const long n_per_row = atol(argv[2]);
    FILE *in = fopen(argv[3], "rb");
    if (!in || n_per_row <= 0 || n_per_row % ggml_blck_size(type) != 0) {
        fprintf(stderr, "bad input or row length\n");
        return 1;
    }
    fseek(in, 0, SEEK_END);
    const long n = ftell(in) / (long)sizeof(float);
    fseek(in, 0, SEEK_SET);
    if (n % n_per_row != 0) {
        fprintf(stderr, "%ld values are not whole rows of %ld\n", n, n_per_row);
        return 1;
    }
    float *src = malloc(n * sizeof(float));
    if (!src || fread(src, sizeof(float), n, in) != (size_t)n) return 1;
    fclose(in);

    const long nrows = n / n_per_row;
    const size_t bytes = ggml_row_size(type, n_per_row) * nrows;
    void *dst = malloc(bytes);
    if (!dst) return 1;
    const size_t written = ggml_quantize_chunk(type, src, dst, 0, nrows, n_per_row, NULL);
    if (written != bytes) return 1;

    FILE *out = fopen(argv[4], "wb");
    if (!out || fwrite(dst, 1, bytes, out) != bytes) return 1;
    fclose(out);
    free(src);
    free(dst);
    return 0;
}
