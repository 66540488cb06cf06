/* The compiled CPU splat compositor of renderer.splat_kernel: one image of several splat objects,
 * without gradients (see that module). Tile binning as in 3DGS: each Gaussian is listed in the
 * 16 x 16 pixel tiles its footprint box touches, in the front-to-back order it comes in; then
 * per tile, Gaussian by Gaussian, the pixels of its box. */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define TILE 16

/* A footprint box x0 y0 x1 y1 inside the image and not empty (boxes of non-finite Gaussians are
 * garbage: skipped). */
static int listed(const int32_t *b, int height, int width)
{
    return 0 <= b[0] && b[0] <= b[2] && b[2] < width && 0 <= b[1] && b[1] <= b[3] && b[3] < height;
}

int nerfsim_composite_splats(
    int n, const float *u, const float *v, const float *conic, const float *opacity, const float *q_max,
    const float *colour, const float *z, const int32_t *slot, const int32_t *box,
    int height, int width, int slots, const float *stretch, float alpha_max, float t_min,
    float *rgb, float *alpha_out, float *depth_sum, float *masks, float *alone, int threads)
{
    const int tiles_x = (width + TILE - 1) / TILE, tiles_y = (height + TILE - 1) / TILE;
    const int64_t tiles = (int64_t)tiles_x * tiles_y, pixels = (int64_t)height * width;
    int64_t *start = calloc(tiles + 1, sizeof(int64_t));
    if (!start) return 1;
    for (int i = 0; i < n; i++) {
        const int32_t *b = box + 4 * i;
        if (!listed(b, height, width)) continue;
        for (int ty = b[1] / TILE; ty <= b[3] / TILE; ty++)
            for (int tx = b[0] / TILE; tx <= b[2] / TILE; tx++) start[(int64_t)ty * tiles_x + tx + 1]++;
    }
    for (int64_t t = 0; t < tiles; t++) start[t + 1] += start[t];
    int32_t *list = malloc((size_t)(start[tiles] > 0 ? start[tiles] : 1) * sizeof(int32_t));
    int64_t *fill = malloc((size_t)tiles * sizeof(int64_t));
    if (!list || !fill) { free(start); free(list); free(fill); return 1; }
    memcpy(fill, start, (size_t)tiles * sizeof(int64_t));
    for (int i = 0; i < n; i++) {
        const int32_t *b = box + 4 * i;
        if (!listed(b, height, width)) continue;
        for (int ty = b[1] / TILE; ty <= b[3] / TILE; ty++)
            for (int tx = b[0] / TILE; tx <= b[2] / TILE; tx++) list[fill[(int64_t)ty * tiles_x + tx]++] = i;
    }
    free(fill);
    int failed = 0;
#pragma omp parallel num_threads(threads)
    {
        /* Per pixel of a tile: the scene's transmittance and each object's own (negative once
         * that object stopped at the pixel). */
        float *state = malloc((size_t)(2 * slots + 6) * TILE * TILE * sizeof(float));
        int *stopped = malloc((size_t)slots * sizeof(int)); /* per object, its stopped pixels in the tile */
        if (!state || !stopped) {
#pragma omp atomic write
            failed = 1;
        }
#pragma omp for schedule(dynamic)
        for (int64_t tile = 0; tile < tiles; tile++) {
            if (!state || !stopped) continue;
            const int ty0 = (int)(tile / tiles_x) * TILE, tx0 = (int)(tile % tiles_x) * TILE;
            const int ty1 = ty0 + TILE < height ? ty0 + TILE : height, tx1 = tx0 + TILE < width ? tx0 + TILE : width;
            float *scene_t = state, *slot_t = state + TILE * TILE, *sums = slot_t + slots * TILE * TILE;
            float *mask_sums = sums + 5 * TILE * TILE; /* r, g, b, alpha, depth; then one per object */
            for (int k = 0; k < (slots + 1) * TILE * TILE; k++) state[k] = 1.0f;
            memset(sums, 0, (size_t)(slots + 5) * TILE * TILE * sizeof(float));
            memset(stopped, 0, (size_t)slots * sizeof(int));
            const int tile_pixels = (ty1 - ty0) * (tx1 - tx0);
            /* Gaussian by Gaussian, front to back, over the pixels of its box in this tile. */
            for (int64_t k = start[tile]; k < start[tile + 1]; k++) {
                const int i = list[k];
                const int s = slot[i];
                if (stopped[s] == tile_pixels) continue; /* hidden behind its own object's front */
                const int32_t *b = box + 4 * i;
                const int y0 = b[1] > ty0 ? b[1] : ty0, y1 = b[3] < ty1 - 1 ? b[3] : ty1 - 1;
                const int x0 = b[0] > tx0 ? b[0] : tx0, x1 = b[2] < tx1 - 1 ? b[2] : tx1 - 1;
                const float ka = conic[3 * i], kb = conic[3 * i + 1], kc = conic[3 * i + 2];
                const float op = opacity[i], qm = q_max[i], cr = colour[3 * i], cg = colour[3 * i + 1],
                            cb = colour[3 * i + 2], zi = z[i];
                float *own = slot_t + s * TILE * TILE;
                for (int y = y0; y <= y1; y++) {
                    const float dv = y + 0.5f - v[i];
                    for (int x = x0; x <= x1; x++) {
                        const int local = (y - ty0) * TILE + (x - tx0);
                        if (own[local] <= 0.0f) continue;
                        const float du = x + 0.5f - u[i];
                        const float q = ka * du * du + 2.0f * kb * du * dv + kc * dv * dv;
                        if (q > qm) continue;
                        float a = op * expf(-0.5f * q);
                        if (a > alpha_max) a = alpha_max;
                        /* As 3DGS: the object stops before the pair that would take its own
                         * transmittance to t_min. */
                        if (own[local] * (1.0f - a) <= t_min) { own[local] = -own[local]; stopped[s]++; continue; }
                        const float w = scene_t[local] * a;
                        sums[local] += w * cr;
                        sums[TILE * TILE + local] += w * cg;
                        sums[2 * TILE * TILE + local] += w * cb;
                        sums[3 * TILE * TILE + local] += w;
                        sums[4 * TILE * TILE + local] += w * zi;
                        mask_sums[s * TILE * TILE + local] += w;
                        scene_t[local] *= 1.0f - a;
                        own[local] *= 1.0f - a;
                    }
                }
            }
            for (int y = ty0; y < ty1; y++) {
                for (int x = tx0; x < tx1; x++) {
                    const int local = (y - ty0) * TILE + (x - tx0);
                    const int64_t pixel = (int64_t)y * width + x;
                    for (int c = 0; c < 3; c++) rgb[3 * pixel + c] = sums[c * TILE * TILE + local];
                    alpha_out[pixel] = sums[3 * TILE * TILE + local];
                    depth_sum[pixel] = sums[4 * TILE * TILE + local] * stretch[pixel];
                    for (int s = 0; s < slots; s++) {
                        masks[s * pixels + pixel] = mask_sums[s * TILE * TILE + local];
                        alone[s * pixels + pixel] = 1.0f - fabsf(slot_t[s * TILE * TILE + local]);
                    }
                }
            }
        }
        free(state);
        free(stopped);
    }
    free(start);
    free(list);
    return failed;
}
