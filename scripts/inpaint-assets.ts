// Writes the small example pictures of the inpainting and outpainting workflows: a scene (sky, hills, a sun,
// a tree) and the mask of where the character goes in it (white = repaint). Drawn as SVG and rendered by sharp,
// so the PNGs can be made again exactly: node --import tsx scripts/inpaint-assets.ts
import { join } from 'node:path';
import sharp from 'sharp';
import { PACKAGE_ROOT } from '../nodes/services.ts';

const SIZE = 256;

const scene = `<svg xmlns="http://www.w3.org/2000/svg" width="${SIZE}" height="${SIZE}">
  <defs><linearGradient id="sky" x1="0" y1="0" x2="0" y2="1"><stop offset="0" stop-color="#6fa8dc"/><stop offset="1" stop-color="#d9ecf7"/></linearGradient></defs>
  <rect width="${SIZE}" height="${SIZE}" fill="url(#sky)"/>
  <circle cx="205" cy="52" r="24" fill="#ffd966"/>
  <ellipse cx="70" cy="230" rx="150" ry="70" fill="#6aa84f"/>
  <ellipse cx="210" cy="240" rx="140" ry="60" fill="#93c47d"/>
  <rect x="28" y="120" width="12" height="60" fill="#7f6000"/>
  <circle cx="34" cy="112" r="26" fill="#38761d"/>
</svg>`;

// Where the character goes: an upright rounded box in the middle of the meadow (x 0.375..0.625, y 0.3..0.9).
const mask = `<svg xmlns="http://www.w3.org/2000/svg" width="${SIZE}" height="${SIZE}">
  <rect width="${SIZE}" height="${SIZE}" fill="#000"/>
  <rect x="96" y="77" width="64" height="154" rx="16" fill="#fff"/>
</svg>`;

const out = join(PACKAGE_ROOT, 'workflows/assets');
await sharp(Buffer.from(scene)).png({ compressionLevel: 9 }).toFile(join(out, 'scene.png'));
await sharp(Buffer.from(mask)).greyscale().png({ compressionLevel: 9 }).toFile(join(out, 'scene_mask.png'));
console.log(`wrote ${join(out, 'scene.png')} and scene_mask.png`);
