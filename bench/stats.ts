/** Small statistics the benchmarks share. */

/** The median (the mean of the two middle values for an even count); 0 for no values. */
export function median(xs: readonly number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  const mid = s.length >> 1;
  return s.length % 2 ? (s[mid] ?? 0) : ((s[mid - 1] ?? 0) + (s[mid] ?? 0)) / 2;
}

/** `x` to `digits` decimals, as a number (for JSON output). */
export function round(x: number, digits = 3): number {
  return Number(x.toFixed(digits));
}
