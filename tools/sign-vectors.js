#!/usr/bin/env node
/*
 * Generates AK/SK (SDK-HMAC-SHA256) test vectors with the official Huawei
 * Cloud Node.js signer, AKSKSigner.sign from @huaweicloud/huaweicloud-sdk-core
 * (read and checked against version 3.1.211), for spec/sign_spec.lua.
 *
 *   node tools/sign-vectors.js [--seed N] [--count N] [--signer-dir DIR]
 *                              [--output FILE]
 *
 * DIR is a folder whose node_modules contains the package (default:
 * $APPCENTER_NODE_SIGNER_DIR, else /tmp/node-signer). The output is a JSON
 * list of {method, url, headers, body, date, ak, sk, authorization}. Passing
 * the first seven fields to core.sign must return `authorization`. The same
 * seed and package version always give the same output, and the defaults
 * (seed 1, 256 vectors) give spec/fixtures/sign_vectors.json.
 *
 * How a vector maps onto the Node signer's request, and why:
 * - Date: sign() takes the date from request.headers['X-Sdk-Date'] and reads
 *   the clock only when that key is absent. The script always sets the key,
 *   so nothing stubs Date.
 * - Host: sign() always signs `host`, taken from the endpoint URL (lower
 *   case, with the port) unless request.headers.host is set. core.sign
 *   signs only the headers it is given, so the script copies the host that
 *   Node signed into the vector's headers.
 * - Path: the SDK's HcClient inserts path parameters into request.endpoint
 *   unencoded, and sign() percent-encodes each segment of that decoded
 *   path without decoding it first. core.sign gets the URL as sent,
 *   decodes %XX and then encodes, so the vector's URL carries the same path
 *   with a random mix of escaped and raw characters. Paths leave out space,
 *   quotes, < > ^ ` { | } because url.parse() in sign() escapes them before
 *   encoding, so Node signs a space as %2520 where the Python SDK and
 *   core.sign sign %20. url.parse() also turns \ into /. Paths leave out
 *   "." and ".." segments too, which the WHATWG URL parser (used by axios)
 *   and curl remove before sending.
 * - Query: sign() reads decoded parameters from request.queryParams and
 *   never parses the URL. The vector's URL carries them percent-encoded in
 *   random order. A raw '+' in it is a plus sign, as core.sign reads it.
 * - Header values: sign() signs them untrimmed. The Go and Python SDKs and
 *   core.sign trim them, and HTTP receivers strip that whitespace, so the
 *   vector keeps spaces and tabs around values and Node gets them trimmed.
 * - Header names: sign() orders canonical headers with localeCompare() but
 *   SignedHeaders by UTF-16 code unit. In the default ICU collation both
 *   orders agree on names made of A-Z, a-z, 0-9 and '-', so generated names
 *   use only those.
 * - Body: sign() hashes JSON.stringify(request.data), so each body is the
 *   JSON.stringify() text of an object or array, or empty.
 * - X-Sdk-Content-Sha256: sign() uses the value of the header with exactly
 *   this spelling as the payload hash. Some vectors set it to
 *   UNSIGNED-PAYLOAD.
 * - Non-ASCII text avoids U+E000..U+FFFF, so that the UTF-16 order in which
 *   sign() sorts query parameters equals the UTF-8 byte order of core.sign.
 */
'use strict';

const fs = require('fs');
const path = require('path');
const { createRequire } = require('module');

const PACKAGE = '@huaweicloud/huaweicloud-sdk-core';
const DEFAULT_SIGNER_DIR = '/tmp/node-signer';
const DEFAULT_COUNT = 256;

const ALNUM = 'ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789';
const UNRESERVED_MARKS = '-._~';
// RFC 3986 path characters that url.parse() leaves as they are.
const PATH_MARKS = '!$&()*+,;=:@';
const QUERY_MARKS = " !$'()*+,;:@/?=&#%[]\"<>^`{|}";
// Below U+E000 or outside the BMP, for the sort order reason given above.
const NON_ASCII = ['é', 'ü', 'ß', 'ñ', 'Ω', 'Ж', '中', '文', '日本', '한', '€', '😀', '🚀'];
const METHODS = ['GET', 'POST', 'PUT', 'DELETE', 'PATCH', 'HEAD', 'OPTIONS'];
const HOSTS = [
  'appcenter.cn-north-4.myhuaweicloud.com',
  'AppCenter.CN-North-4.MyHuaweiCloud.com',
  'workspace.ap-southeast-1.myhuaweicloud.com',
  'api.example.test',
  'localhost',
  '127.0.0.1',
];
const HEADER_NAMES = [
  'Content-Type', 'X-Project-Id', 'X-Security-Token', 'X-Request-Id',
  'User-Agent', 'Accept', 'Accept-Language', 'X-Domain-Id', 'X-Language',
];
const CONTENT_TYPES = [
  'application/json', 'application/json;charset=UTF-8', 'text/plain',
  'application/octet-stream',
];
// Names that sign() or core.sign treat specially. Vectors add X-Sdk-Date
// and X-Sdk-Content-Sha256 on purpose, and never the others.
const RESERVED_NAMES = new Set([
  'host', 'x-sdk-date', 'x-sdk-content-sha256', 'authorization',
]);
const CONTENT_SHA256 = 'X-Sdk-Content-Sha256';


function fail(message) {
  process.stderr.write(`sign-vectors: ${message}\n`);
  process.exit(2);
}


function parseArguments(argv) {
  const options = {
    seed: 1,
    count: DEFAULT_COUNT,
    signerDir: process.env.APPCENTER_NODE_SIGNER_DIR || DEFAULT_SIGNER_DIR,
    output: null,
  };
  for (let i = 0; i < argv.length; i += 2) {
    const name = argv[i];
    const value = argv[i + 1];
    if (value === undefined) fail(`missing value after ${name}`);
    if (name === '--seed') {
      options.seed = Number(value);
      if (!Number.isInteger(options.seed) || options.seed < 0 || options.seed >= 2 ** 32) {
        fail(`invalid --seed ${value}: expected an integer from 0 to 4294967295`);
      }
    } else if (name === '--count') {
      options.count = Number(value);
      if (!Number.isInteger(options.count) || options.count < 1) {
        fail(`invalid --count ${value}: expected a positive integer`);
      }
    } else if (name === '--signer-dir') {
      options.signerDir = value;
    } else if (name === '--output') {
      options.output = value;
    } else {
      fail(`unknown option ${name}. Options: --seed N --count N --signer-dir DIR --output FILE`);
    }
  }
  return options;
}


function loadSigner(signerDir) {
  const requireFromDir = createRequire(path.join(path.resolve(signerDir), 'index.js'));
  try {
    return {
      AKSKSigner: requireFromDir(`${PACKAGE}/auth/AKSKSigner`).AKSKSigner,
      BasicCredentials: requireFromDir(PACKAGE).BasicCredentials,
    };
  } catch (err) {
    return fail(`cannot load ${PACKAGE} from ${signerDir}/node_modules (${err.message.split("\n")[0]}). `
      + `Install it with: npm install --prefix ${signerDir} ${PACKAGE}`);
  }
}


// Mulberry32: a small seeded generator, so that a seed fixes the output.
function makeRandom(seed) {
  let state = seed >>> 0;
  function next() {
    state = (state + 0x6d2b79f5) >>> 0;
    let t = state;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  }
  return {
    int: (low, high) => low + Math.floor(next() * (high - low + 1)),
    chance: (probability) => next() < probability,
    pick: (list) => list[Math.floor(next() * list.length)],
  };
}


function percentEncode(text, random) {
  const lower = random.chance(0.3);
  let out = '';
  for (const byte of Buffer.from(text, 'utf8')) {
    const hex = byte.toString(16).padStart(2, '0');
    out += '%' + (lower ? hex : hex.toUpperCase());
  }
  return out;
}


function randomText(random, length, marks) {
  let text = '';
  for (let i = 0; i < length; i++) {
    const kind = random.int(1, 100);
    if (kind <= 55) text += random.pick(ALNUM);
    else if (kind <= 65) text += random.pick(UNRESERVED_MARKS);
    else if (kind <= 85) text += random.pick(marks);
    else text += random.pick(NON_ASCII);
  }
  return text;
}


/* ---------------------------------------------------------------------
 * Path and query
 * ------------------------------------------------------------------- */

function randomSegment(random) {
  if (random.chance(0.12)) return '';
  for (;;) {
    const segment = randomText(random, random.int(1, 10), PATH_MARKS + '%%');
    if (segment !== '.' && segment !== '..') return segment;
  }
}


// Writes one decoded path character as a URL may carry it.
function encodePathCharacter(character, random) {
  if (character === '%') return percentEncode(character, random);
  if (ALNUM.includes(character) || UNRESERVED_MARKS.includes(character)) {
    return random.chance(0.1) ? percentEncode(character, random) : character;
  }
  if (PATH_MARKS.includes(character)) {
    return random.chance(0.5) ? percentEncode(character, random) : character;
  }
  return random.chance(0.7) ? percentEncode(character, random) : character;
}


// Returns the decoded path for Node and the encoded path for the URL.
function randomPath(random) {
  const count = random.int(0, 5);
  if (count === 0) {
    return random.chance(0.5) ? { decoded: '', encoded: '' } : { decoded: '/', encoded: '/' };
  }
  const segments = [];
  for (let i = 0; i < count; i++) segments.push(randomSegment(random));
  let decoded = '';
  let encoded = '';
  segments.forEach((segment, index) => {
    decoded += '/' + segment;
    // A later separator written as %2F decodes to the same path.
    encoded += index > 0 && random.chance(0.05) ? percentEncode('/', random) : '/';
    for (const character of segment) encoded += encodePathCharacter(character, random);
  });
  if (random.chance(0.4)) {
    decoded += '/';
    encoded += '/';
  }
  return { decoded, encoded };
}


// Writes one decoded query character as a URL may carry it. inValue
// allows a raw '=', which only the first '=' of a parameter splits on.
function encodeQueryCharacter(character, inValue, random) {
  if (ALNUM.includes(character) || UNRESERVED_MARKS.includes(character)) {
    return random.chance(0.1) ? percentEncode(character, random) : character;
  }
  if ("+!$'()*,;:@/?".includes(character) || (inValue && character === '=')) {
    return random.chance(0.5) ? percentEncode(character, random) : character;
  }
  if (NON_ASCII.includes(character) || character.codePointAt(0) > 0x7f) {
    return random.chance(0.7) ? percentEncode(character, random) : character;
  }
  return percentEncode(character, random);
}


function encodeQueryText(text, inValue, random) {
  let out = '';
  for (const character of text) out += encodeQueryCharacter(character, inValue, random);
  return out;
}


// Returns the query parameters for Node (decoded, repeated names as
// arrays) and the query string for the URL, '?' included when present.
function randomQuery(random) {
  const params = Object.create(null);
  if (random.chance(0.25)) {
    return { params, query: random.chance(0.2) ? '?' : '' };
  }
  const pieces = [];
  const names = [];
  const count = random.int(1, 6);
  for (let i = 0; i < count; i++) {
    let name;
    if (names.length > 0 && random.chance(0.2)) name = random.pick(names);
    else if (random.chance(0.05)) name = '';
    else name = randomText(random, random.int(1, 8), QUERY_MARKS);
    const value = random.chance(0.2) ? '' : randomText(random, random.int(1, 12), QUERY_MARKS);
    names.push(name);

    // A name without '=' means an empty value. core.sign skips an empty
    // piece, so an empty name always keeps its '='.
    let piece = encodeQueryText(name, false, random);
    if (value !== '' || name === '' || random.chance(0.6)) {
      piece += '=' + encodeQueryText(value, true, random);
    }
    pieces.push(piece);
    if (random.chance(0.1)) pieces.push('');

    if (!(name in params)) params[name] = value;
    else if (Array.isArray(params[name])) params[name].push(value);
    else params[name] = [params[name], value];
  }
  return { params, query: '?' + pieces.join('&') };
}


/* ---------------------------------------------------------------------
 * Headers and body
 * ------------------------------------------------------------------- */

function randomCase(name, random) {
  const style = random.int(1, 5);
  if (style === 1) return name.toLowerCase();
  if (style === 2) return name.toUpperCase();
  if (style === 3) {
    return Array.from(name, (c) => (random.chance(0.5) ? c.toUpperCase() : c.toLowerCase())).join('');
  }
  return name;
}


function randomHeaderName(random) {
  if (random.chance(0.5)) return randomCase(random.pick(HEADER_NAMES), random);
  let name = 'X-';
  const length = random.int(1, 10);
  for (let i = 0; i < length; i++) {
    name += random.chance(0.15) ? '-' : random.pick(ALNUM);
  }
  return randomCase(name, random);
}


function randomHeaderValue(name, random) {
  if (name.toLowerCase() === 'content-type') return random.pick(CONTENT_TYPES);
  if (random.chance(0.1)) return '';
  if (random.chance(0.05)) return ' '.repeat(random.int(1, 3));
  let value = '';
  const length = random.int(1, 20);
  for (let i = 0; i < length; i++) {
    const kind = random.int(1, 100);
    if (kind <= 8) value += ' ';
    else if (kind <= 10) value += '\t';
    else value += String.fromCharCode(random.int(0x21, 0x7e));
  }
  return value;
}


function addSurroundingSpace(value, random) {
  if (!random.chance(0.3)) return value;
  const space = () => Array.from({ length: random.int(0, 3) }, () => (random.chance(0.8) ? ' ' : '\t')).join('');
  return space() + value + space();
}


function trimWhitespace(value) {
  return value.replace(/^[ \t]+|[ \t]+$/g, '');
}


function randomHeaders(random) {
  const headers = {};
  const seen = new Set();
  const count = random.int(0, 5);
  while (seen.size < count) {
    const name = randomHeaderName(random);
    const lower = name.toLowerCase();
    if (seen.has(lower) || RESERVED_NAMES.has(lower)) continue;
    seen.add(lower);
    headers[name] = addSurroundingSpace(randomHeaderValue(name, random), random);
  }
  if (random.chance(0.1)) {
    headers[CONTENT_SHA256] = addSurroundingSpace('UNSIGNED-PAYLOAD', random);
  }
  return headers;
}


function randomJsonValue(random, depth) {
  const kind = random.int(1, depth > 1 ? 6 : 8);
  if (kind === 1) return random.int(-100000, 100000);
  if (kind === 2) return random.int(-1000, 1000) / 8;
  if (kind === 3) return random.chance(0.5);
  if (kind === 4) return null;
  if (kind <= 6) return randomText(random, random.int(0, 12), QUERY_MARKS + '\\\n\t');
  if (kind === 7) return Array.from({ length: random.int(0, 3) }, () => randomJsonValue(random, depth + 1));
  return randomJsonObject(random, depth + 1);
}


function randomJsonObject(random, depth) {
  const object = {};
  const count = random.int(0, 4);
  for (let i = 0; i < count; i++) {
    object[randomText(random, random.int(1, 8), '_ ')] = randomJsonValue(random, depth);
  }
  return object;
}


// Returns the value for request.data, or undefined for an empty body.
function randomBodyData(method, random) {
  const emptyChance = ['GET', 'HEAD', 'DELETE', 'OPTIONS'].includes(method) ? 0.7 : 0.2;
  if (random.chance(emptyChance)) return undefined;
  if (random.chance(0.2)) {
    return Array.from({ length: random.int(0, 3) }, () => randomJsonValue(random, 1));
  }
  return randomJsonObject(random, 1);
}


/* ---------------------------------------------------------------------
 * Vectors
 * ------------------------------------------------------------------- */

function randomDate(random) {
  // Seconds from 2001-01-01 to 2037-12-31, UTC.
  const seconds = random.int(978307200, 2145830400);
  return new Date(seconds * 1000).toISOString().replace(/[-:]/g, '').replace(/\.\d+Z$/, 'Z');
}


function randomKey(random, prefix, alphabet, length) {
  let key = prefix;
  for (let i = 0; i < length; i++) key += random.pick(alphabet);
  return key;
}


function makeVector(signer, random) {
  const method = random.pick(METHODS);
  const origin = `${random.pick(['http', 'https'])}://${random.pick(HOSTS)}`
    + (random.chance(0.3) ? `:${random.int(1024, 65535)}` : '');
  const { decoded, encoded } = randomPath(random);
  const { params, query } = randomQuery(random);
  const fragment = random.chance(0.05) ? '#section-1' : '';
  const headers = randomHeaders(random);
  const data = randomBodyData(method, random);
  const date = randomDate(random);
  const ak = randomKey(random, 'FAKEAK', 'ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789', 14);
  const sk = randomKey(random, 'fake-sk-', ALNUM, 24);

  const nodeHeaders = { 'X-Sdk-Date': date };
  for (const [name, value] of Object.entries(headers)) nodeHeaders[name] = trimWhitespace(value);
  const credential = new signer.BasicCredentials().withAk(ak).withSk(sk);
  const signed = signer.AKSKSigner.sign({
    method,
    endpoint: origin + decoded,
    headers: nodeHeaders,
    queryParams: params,
    data,
  }, credential);

  return {
    method,
    url: origin + encoded + query + fragment,
    headers: { host: signed.host, ...headers },
    body: data === undefined ? '' : JSON.stringify(data),
    date,
    ak,
    sk,
    authorization: signed.Authorization,
  };
}


function main() {
  const options = parseArguments(process.argv.slice(2));
  const signer = loadSigner(options.signerDir);
  const random = makeRandom(options.seed);
  const vectors = [];
  for (let i = 0; i < options.count; i++) vectors.push(makeVector(signer, random));

  const text = '[\n' + vectors.map((vector) => JSON.stringify(vector)).join(',\n') + '\n]\n';
  if (options.output) fs.writeFileSync(options.output, text);
  else process.stdout.write(text);
}


main();
