#!/usr/bin/env node
// Generates tests/data/simple_hash_vectors.json: inputs and the buckets the
// rollout plan's TypeScript `simpleHash` gives them (plan, Phase 3).
//
//   node tests/data/gen_simple_hash_vectors.js           writes the JSON file
//   node tests/data/gen_simple_hash_vectors.js --stdout  prints it instead
//
// Plain Node, no packages. Deterministic: fixed inputs plus a seeded PRNG, so
// running it again must reproduce the committed file byte for byte
// (tests/test_bucketing.py checks that).
'use strict';

const fs = require('fs');
const path = require('path');

// ---- The plan's function, copied exactly as written (types dropped). ----
const FUNCTION_SOURCE = `function simpleHash(str) {
  let hash = 0;
  for (let i = 0; i < str.length; i++) {
    const char = str.charCodeAt(i);
    hash = (hash << 5) - hash + char;
    hash = hash & hash; // Convert to 32-bit integer
  }
  return Math.abs(hash);
}`;
const simpleHash = new Function(`${FUNCTION_SOURCE}\nreturn simpleHash;`)();

// The same loop without Math.abs, to label edge cases by their 32-bit value.
function int32Hash(str) {
  let hash = 0;
  for (let i = 0; i < str.length; i++) {
    hash = ((hash << 5) - hash + str.charCodeAt(i)) | 0;
  }
  return hash;
}

// ---- Seeded PRNG (mulberry32) and uuid-shaped strings. ----
function mulberry32(seed) {
  let a = seed >>> 0;
  return function next() {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return (t ^ (t >>> 14)) >>> 0;
  };
}

const rng = mulberry32(0x5eed1234);

function uuid4() {
  const bytes = [];
  for (let i = 0; i < 4; i++) {
    const w = rng();
    bytes.push((w >>> 24) & 0xff, (w >>> 16) & 0xff, (w >>> 8) & 0xff, w & 0xff);
  }
  bytes[6] = (bytes[6] & 0x0f) | 0x40; // version 4
  bytes[8] = (bytes[8] & 0x3f) | 0x80; // RFC 4122 variant
  const hex = bytes.map((b) => b.toString(16).padStart(2, '0')).join('');
  return [
    hex.slice(0, 8),
    hex.slice(8, 12),
    hex.slice(12, 16),
    hex.slice(16, 20),
    hex.slice(20, 32),
  ].join('-');
}

// ---- Suffix solver: append k code units in [lo, hi] to a prefix so that the
// 32-bit hash lands exactly on `target`. The hash is h' = 31^k*h + sum(d_i *
// 31^(k-1-i)) mod 2^32, so this is a mixed-radix representation problem; with
// hi - lo >= 30 every value up to (hi - lo) * sum(weights) is reachable
// greedily. Returns null when this prefix cannot reach the target. ----
const TWO32 = 1n << 32n;

function solveSuffix(prefix, target, k, lo, hi) {
  const weights = [];
  for (let i = k - 1; i >= 0; i--) weights.push(31n ** BigInt(i));
  const wsum = weights.reduce((x, y) => x + y, 0n);
  const h = BigInt(int32Hash(prefix));
  const span = BigInt(hi - lo);
  let need = (BigInt(target) - (31n ** BigInt(k)) * h - BigInt(lo) * wsum) % TWO32;
  if (need < 0n) need += TWO32;
  if (need > span * wsum) return null;
  let suffix = '';
  for (const w of weights) {
    let d = need / w;
    if (d > span) d = span;
    need -= d * w;
    suffix += String.fromCharCode(lo + Number(d));
  }
  if (need !== 0n) return null;
  return suffix;
}

// Finds (event_id, user_id) where event_id is a uuid and user_id is a uuid
// followed by k solved units, hashing exactly to `target`.
function pairHashingTo(target, k, lo, hi) {
  for (let tries = 0; tries < 1000000; tries++) {
    const eventId = uuid4();
    const userPrefix = uuid4();
    const suffix = solveSuffix(eventId + userPrefix, target, k, lo, hi);
    if (suffix !== null) {
      const userId = userPrefix + suffix;
      if (int32Hash(eventId + userId) !== target) throw new Error('solver is wrong');
      return [eventId, userId];
    }
  }
  throw new Error(`no pair found for target ${target}`);
}

// ---- Vectors. ----
const vectors = [];
function add(kase, eventId, userId) {
  const input = eventId + userId;
  const hash = simpleHash(input);
  vectors.push({
    case: kase,
    event_id: eventId,
    user_id: userId,
    input,
    int32: int32Hash(input),
    hash,
    bucket: hash % 100,
  });
}

// Random canonical lowercase uuid pairs: the shape real traffic has.
for (let i = 0; i < 200; i++) add('uuid pair', uuid4(), uuid4());

// Uppercase uuids: a different string, so generally a different bucket.
for (let i = 0; i < 10; i++) {
  const e = uuid4();
  const u = uuid4();
  add('uuid pair', e, u);
  add('uppercase uuid pair (same ids as previous vector)', e.toUpperCase(), u.toUpperCase());
}
// Uuids without dashes / with braces.
{
  const e = uuid4();
  const u = uuid4();
  add('uuid pair', e, u);
  add('undashed uuid pair (same ids as previous vector)', e.replace(/-/g, ''), u.replace(/-/g, ''));
  add('braced uuid pair (same ids)', `{${e}}`, `{${u}}`);
}

// Empty strings and concatenation: only event_id + user_id matters.
add('both empty', '', '');
{
  const e = uuid4();
  const u = uuid4();
  add('empty user_id', e + u, '');
  add('empty event_id', '', e + u);
  add('split moved (same input as the two above)', e.slice(0, 10), e.slice(10) + u);
}

// Single characters.
for (const c of ['a', 'z', 'A', '0', '9', '-', ' ', '\u0000', '\u007f', '\u00e9', '\uffff']) {
  add('single char', c, '');
}
add('single char as user_id', '', 'x');

// Non-ASCII in the Basic Multilingual Plane.
add('non-ASCII BMP: precomposed é', 'caf\u00e9', '');
add('non-ASCII BMP: e + combining acute (differs from precomposed)', 'cafe\u0301', '');
add('non-ASCII BMP: CJK', '\u4e2d\u6587', '\u7528\u6237');
add('non-ASCII BMP: Japanese', '\u30a4\u30d9\u30f3\u30c8', '\u30e6\u30fc\u30b6\u30fc');
add('non-ASCII BMP: Arabic', '\u062d\u062f\u062b', '\u0645\u0633\u062a\u062e\u062f\u0645');
add('non-ASCII BMP: Cyrillic', '\u0441\u043e\u0431\u044b\u0442\u0438\u0435', '\u0433\u043e\u0441\u0442\u044c');
add('non-ASCII BMP: BOM + NBSP', '\ufeff', '\u00a0');
add('non-ASCII BMP: private use', '\ue000', '\uf8ff');
add('non-ASCII BMP: uuid with a CJK user', uuid4(), '\u5a5a\u793c\u5ba2\u4eba');

// Astral characters: two UTF-16 code units each (a surrogate pair).
add('astral: emoji', '\u{1F48D}\u{1F389}', '');
add('astral: emoji split across ids', '\u{1F48D}', '\u{1F389}');
add('astral: ZWJ family sequence', '\u{1F468}\u200d\u{1F469}\u200d\u{1F467}', '');
add('astral: flag (regional indicators)', '\u{1F1FA}\u{1F1F8}', '\u{1F1EB}\u{1F1F7}');
add('astral: U+10000 and U+10FFFF', '\u{10000}', '\u{10FFFF}');
add('astral: math alphanumerics', '\u{1D4D0}\u{1D4D1}', '');
add('astral: uuid + emoji', uuid4(), '\u{1F600}');

// Lone and misordered surrogates: JSON carries them as \udXXX escapes
// (JSON.stringify emits well-formed escapes; Python's json round-trips them).
add('lone high surrogate', '\ud83d', '');
add('lone low surrogate', '', '\ude00');
add('low then high surrogate (not a pair)', '\ude00', '\ud83d');
add('surrogate pair split across ids', '\ud83d', '\ude00');
add('lone surrogate inside a uuid pair', uuid4() + '\udbff', uuid4());

// Very long strings.
add('long: 10,000 x "a"', 'a'.repeat(10000), '');
{
  let s = '';
  while (s.length < 10000) s += uuid4();
  add('long: 10,000 uuid characters', s.slice(0, 5000), s.slice(5000, 10000));
}
add('long: 5,000 emoji (10,000 code units)', '\u{1F389}'.repeat(2500), '\u{1F48D}'.repeat(2500));
add('long: 10,000 x U+FFFF', '\uffff'.repeat(10000), '');

// Extremes of the 32-bit value.
// "polygenelubricants" is a known Java String.hashCode of Integer.MIN_VALUE;
// the recurrence is the same (31 * h + c), so simpleHash gives 2**31.
add('hash -2^31: polygenelubricants', 'polygenelubricants', '');
add('hash -2^31: polygenelubricants split', 'polygene', 'lubricants');
add('hash 0: NUL', '\u0000', '');
add('hash 0: NUL NUL', '\u0000\u0000', '');
// Java hashCode collisions carry over too: "Aa" and "BB" hash alike.
add('collision: Aa', 'Aa', '');
add('collision: BB (same hash as Aa)', 'BB', '');

const EXTREMES = [
  ['-2^31', -2147483648],
  ['0', 0],
  ['2^31-1', 2147483647],
  ['-1', -1],
  ['1', 1],
  ['-(2^31-1)', -2147483647],
];
for (const [label, target] of EXTREMES) {
  // Printable ASCII suffix (4 units), and a CJK suffix (3 units, no surrogates).
  let [e, u] = pairHashingTo(target, 4, 0x20, 0x7e);
  add(`hash ${label}: uuid pair + printable ASCII suffix`, e, u);
  [e, u] = pairHashingTo(target, 3, 0x4e00, 0x9fff);
  add(`hash ${label}: uuid pair + CJK suffix`, e, u);
}

const doc = {
  description:
    'Test vectors for the rollout bucket: hash = simpleHash(event_id + user_id), ' +
    'bucket = hash % 100, computed by Node running the plan\'s TypeScript function ' +
    '(plan Phase 3) exactly as written, types dropped. `input` is event_id + user_id; ' +
    '`int32` is the signed 32-bit value before Math.abs (so -2^31 gives hash 2^31). ' +
    'Strings are JavaScript strings (UTF-16 code units); lone surrogates appear as ' +
    '\\udXXX escapes. Generated by tests/data/gen_simple_hash_vectors.js; do not edit by hand.',
  function: FUNCTION_SOURCE,
  generator: 'tests/data/gen_simple_hash_vectors.js',
  count: vectors.length,
  vectors,
};

// One vector per line, so diffs stay readable.
const lines = [];
lines.push('{');
for (const key of ['description', 'function', 'generator', 'count']) {
  lines.push(`  ${JSON.stringify(key)}: ${JSON.stringify(doc[key])},`);
}
lines.push('  "vectors": [');
vectors.forEach((v, i) => {
  lines.push(`    ${JSON.stringify(v)}${i < vectors.length - 1 ? ',' : ''}`);
});
lines.push('  ]');
lines.push('}');
const text = lines.join('\n') + '\n';

// Sanity: the text parses back to the same document.
if (JSON.stringify(JSON.parse(text)) !== JSON.stringify(doc)) {
  throw new Error('output does not round-trip');
}

if (process.argv.includes('--stdout')) {
  process.stdout.write(text);
} else {
  const out = path.join(__dirname, 'simple_hash_vectors.json');
  fs.writeFileSync(out, text, 'utf8');
  process.stderr.write(`wrote ${vectors.length} vectors to ${out}\n`);
}
