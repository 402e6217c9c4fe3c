/**
 * PyTorch's CPU `torch.randperm(n, generator=torch.Generator().manual_seed(seed))`,
 * number for number, so data the original shuffles with it (the adder
 * problems) can be rebuilt exactly.
 *
 * PyTorch's CPU generator is MT19937 seeded by `init_genrand` with the
 * seed's low 32 bits (`CPUGeneratorImpl`); `random()` is its next 32-bit
 * output. `randperm_cpu` (`aten/src/ATen/native/TensorFactories.cpp`,
 * PyTorch 1.13 and later) fills 0…n-1 and, for n below 2³²/20, swaps each
 * position i < n-1 with `i + random() % (n - i)`.
 *
 * @module
 */
import { Mt19937 } from "./mt19937.ts";

/** Largest n the 32-bit path of `randperm_cpu` takes (larger n draw 64-bit numbers: not ported). */
const MAX_N = Math.floor(0xffffffff / 20);

/**
 * `torch.randperm(n)` after `manual_seed(seed)` on the CPU generator.
 *
 * @param n length, 0 <= n < 2³²/20.
 * @param seed a non-negative safe integer; PyTorch uses its low 32 bits.
 */
export function torchRandperm(n: number, seed: number): Int32Array {
  if (!Number.isInteger(n) || n < 0 || n >= MAX_N) {
    throw new RangeError(`torchRandperm: n must be an integer in 0..${MAX_N - 1}, got ${n}`);
  }
  if (!Number.isSafeInteger(seed) || seed < 0) {
    throw new RangeError(`torchRandperm: seed must be a non-negative safe integer, got ${seed}`);
  }
  const generator = new Mt19937().initGenrand(seed % 0x100000000);
  const perm = new Int32Array(n);
  for (let i = 0; i < n; i++) perm[i] = i;
  for (let i = 0; i < n - 1; i++) {
    const z = generator.nextUint32() % (n - i);
    const swap = perm[i];
    perm[i] = perm[i + z];
    perm[i + z] = swap;
  }
  return perm;
}
