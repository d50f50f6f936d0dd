// Types for scripts/system-deps.mjs (plain JavaScript so that it runs before `npm ci`).
export declare const CHROMIUM: string;
export declare const SWIFTSHADER_ICD: string;
export interface SystemPackage {
  debian: string;
  brew: string;
  neededBy: string;
  present(): boolean;
}
export declare const PACKAGES: readonly SystemPackage[];
export declare function missingPackages(): SystemPackage[];
