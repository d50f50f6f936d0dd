// The decoded picture type every image helper shares (its own module, so helpers need not import each other).

/** 8-bit RGB, row-major HWC. */
export interface RgbImage {
  width: number;
  height: number;
  data: Uint8Array;
}
