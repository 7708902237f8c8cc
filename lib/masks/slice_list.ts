/**
 * The slices a spec builder collects, in growable flat typed arrays.
 * @module
 */

/**
 * Slices collected by a builder in growable flat typed arrays. Specs keep flat arrays, not tuples: the
 * compiler reads them in one cheap pass (walking frozen tuples is an order of magnitude slower in V8).
 */
export class SliceList {
  q: Int32Array = new Int32Array(32);
  k: Int32Array = new Int32Array(32);
  types: Int32Array = new Int32Array(16);
  count = 0;

  /** Appends slice `[qs, qe) × [ks, ke)` of AttnType `type`. */
  push(qs: number, qe: number, ks: number, ke: number, type: number): void {
    if (this.count === this.types.length) this.#grow();
    const index = this.count++;
    this.q[2 * index] = qs;
    this.q[2 * index + 1] = qe;
    this.k[2 * index] = ks;
    this.k[2 * index + 1] = ke;
    this.types[index] = type;
  }

  /** Appends the slice unless it is empty. */
  pushNonEmpty(qs: number, qe: number, ks: number, ke: number, type: number): void {
    if (qs < qe && ks < ke) this.push(qs, qe, ks, ke, type);
  }

  #grow(): void {
    const grow = (array: Int32Array): Int32Array => {
      const larger = new Int32Array(array.length * 2);
      larger.set(array);
      return larger;
    };
    this.q = grow(this.q);
    this.k = grow(this.k);
    this.types = grow(this.types);
  }
}
