// Inlining control for the tokenizer's hot loops: what must inline into them, and the rare paths kept
// out of them so that they stay small.
#pragma once

#if defined(__GNUC__) || defined(__clang__)
#define TOKENLANE_ALWAYS_INLINE inline __attribute__((always_inline))
#define TOKENLANE_NOINLINE __attribute__((noinline))
#else
#define TOKENLANE_ALWAYS_INLINE inline
#define TOKENLANE_NOINLINE
#endif
