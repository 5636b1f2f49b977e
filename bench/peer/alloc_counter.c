/* Counts the bytes Python asks its allocators for, for bench/bench_copies.py.
 *
 * tracemalloc sees only memory that is still allocated (current and peak), not
 * how much was allocated and freed again; a body copied three times and freed
 * leaves no trace there. This shim wraps the three PyMem allocator domains
 * (RAW, MEM, OBJ) with PyMem_SetAllocator and adds up what malloc and calloc
 * are asked for, and what realloc is asked to grow to (new size; a growing
 * bytearray shows there), then forwards to the original allocators. A large
 * request that pymalloc passes on to the RAW domain is counted once.
 *
 * Loaded by ctypes.PyDLL (the GIL stays held) from the Python process itself,
 * so the PyMem_* symbols resolve against the running interpreter; no Python
 * headers are needed (the struct and enum below are the stable C API's).
 * Built by bench/peers.py (cc -O2 -shared -fPIC) into bench/.build/.
 */
#include <stddef.h>

typedef enum { PYMEM_DOMAIN_RAW, PYMEM_DOMAIN_MEM, PYMEM_DOMAIN_OBJ } PyMemAllocatorDomain;

typedef struct {
    void *ctx;
    void *(*malloc)(void *ctx, size_t size);
    void *(*calloc)(void *ctx, size_t nelem, size_t elsize);
    void *(*realloc)(void *ctx, void *ptr, size_t new_size);
    void (*free)(void *ctx, void *ptr);
} PyMemAllocatorEx;

extern void PyMem_GetAllocator(PyMemAllocatorDomain domain, PyMemAllocatorEx *allocator);
extern void PyMem_SetAllocator(PyMemAllocatorDomain domain, PyMemAllocatorEx *allocator);

static PyMemAllocatorEx original[3];
static int installed;

/* read by ctypes */
unsigned long long alloc_bytes, alloc_calls, realloc_bytes, realloc_calls, big_bytes, big_calls;
unsigned long long big_threshold = 16384;

static void count(unsigned long long *bytes, unsigned long long *calls, size_t n) {
    __atomic_fetch_add(bytes, n, __ATOMIC_RELAXED);
    __atomic_fetch_add(calls, 1, __ATOMIC_RELAXED);
    if (n >= big_threshold) {
        __atomic_fetch_add(&big_bytes, n, __ATOMIC_RELAXED);
        __atomic_fetch_add(&big_calls, 1, __ATOMIC_RELAXED);
    }
}

/* pymalloc (the MEM and OBJ domains) hands requests above 512 bytes on to the RAW domain: those are
 * counted once, where they were asked for. A RAW request counts only when no MEM/OBJ call is under way
 * on this thread. */
static __thread int nested;

static void *c_malloc(void *ctx, size_t n) {
    PyMemAllocatorEx *o = ctx;
    count(&alloc_bytes, &alloc_calls, n);
    nested++;
    void *p = o->malloc(o->ctx, n);
    nested--;
    return p;
}

static void *c_calloc(void *ctx, size_t nelem, size_t elsize) {
    PyMemAllocatorEx *o = ctx;
    count(&alloc_bytes, &alloc_calls, nelem * elsize);
    nested++;
    void *p = o->calloc(o->ctx, nelem, elsize);
    nested--;
    return p;
}

static void *c_realloc(void *ctx, void *ptr, size_t n) {
    PyMemAllocatorEx *o = ctx;
    count(&realloc_bytes, &realloc_calls, n);
    nested++;
    void *p = o->realloc(o->ctx, ptr, n);
    nested--;
    return p;
}

static void *raw_malloc(void *ctx, size_t n) {
    PyMemAllocatorEx *o = ctx;
    if (!nested) count(&alloc_bytes, &alloc_calls, n);
    return o->malloc(o->ctx, n);
}

static void *raw_calloc(void *ctx, size_t nelem, size_t elsize) {
    PyMemAllocatorEx *o = ctx;
    if (!nested) count(&alloc_bytes, &alloc_calls, nelem * elsize);
    return o->calloc(o->ctx, nelem, elsize);
}

static void *raw_realloc(void *ctx, void *ptr, size_t n) {
    PyMemAllocatorEx *o = ctx;
    if (!nested) count(&realloc_bytes, &realloc_calls, n);
    return o->realloc(o->ctx, ptr, n);
}

static void c_free(void *ctx, void *ptr) {
    PyMemAllocatorEx *o = ctx;
    o->free(o->ctx, ptr);
}

/* Wrap the three domains once; returns 1 when installed by this call, 0 if it already was. */
int alloc_counter_install(void) {
    if (installed) return 0;
    for (int d = 0; d < 3; d++) {
        PyMem_GetAllocator((PyMemAllocatorDomain)d, &original[d]);
        PyMemAllocatorEx wrapped = {&original[d], c_malloc, c_calloc, c_realloc, c_free};
        if (d == PYMEM_DOMAIN_RAW) {
            wrapped.malloc = raw_malloc;
            wrapped.calloc = raw_calloc;
            wrapped.realloc = raw_realloc;
        }
        PyMem_SetAllocator((PyMemAllocatorDomain)d, &wrapped);
    }
    installed = 1;
    return 1;
}
