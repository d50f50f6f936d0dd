// The names of the weight formats, on their own so that model sets can record them without
// importing the format logic (which itself reads model-set types).
export type WeightFormat = 'fp32' | 'fp16' | 'int8' | 'int4';
export const WEIGHT_FORMATS: readonly WeightFormat[] = ['fp32', 'fp16', 'int8', 'int4'];
