// Crypto for the discretpeer browser shell: SPAKE2 (compatible with python-spake2's defaults:
// Ed25519 group, SHA-256, M/N from seeds "M"/"N"), HKDF tokens as discretpeer/tokens.py, HMAC.
// Only WebCrypto and noble-ed25519's point arithmetic (vendor/); no other dependency.
import { Point } from './vendor/noble-ed25519.js';

const L = 2n ** 252n + 27742317777372353535851937790883648493n;
// python: spake2.parameters.ed25519.ParamsEd25519.M / .N (arbitrary elements of seeds b"M", b"N")
const M = Point.fromHex('15cfd18e385952982b6a8f8c7854963b58e34388c8e6dae891db756481a02312');
const N = Point.fromHex('f04f2e7eb734b2a8f8b472eaf9c3c632576ac64aea650b496a8a20ff00e583c3');
const enc = new TextEncoder();

export const concat = (...parts) => {
  const out = new Uint8Array(parts.reduce((n, p) => n + p.length, 0));
  let i = 0;
  for (const p of parts) { out.set(p, i); i += p.length; }
  return out;
};
export const b64 = (bytes) => btoa(String.fromCharCode(...bytes));
export const unb64 = (text) => Uint8Array.from(atob(text), (c) => c.charCodeAt(0));
export const hex = (bytes) => Array.from(bytes, (b) => b.toString(16).padStart(2, '0')).join('');
const bigFromBytesBE = (bytes) => BigInt('0x' + (hex(bytes) || '0'));

export async function sha256(bytes) {
  return new Uint8Array(await crypto.subtle.digest('SHA-256', bytes));
}

export async function hkdf(ikm, salt, info, length) {
  const key = await crypto.subtle.importKey('raw', ikm, 'HKDF', false, ['deriveBits']);
  const bits = await crypto.subtle.deriveBits({ name: 'HKDF', hash: 'SHA-256', salt, info }, key, length * 8);
  return new Uint8Array(bits);
}

export async function hmac(key, ...parts) {
  const k = await crypto.subtle.importKey('raw', key, { name: 'HMAC', hash: 'SHA-256' }, false, ['sign']);
  const joined = [];
  parts.forEach((p, i) => { if (i) joined.push(new Uint8Array([0])); joined.push(p); });
  return new Uint8Array(await crypto.subtle.sign('HMAC', k, concat(...joined)));
}

export function equalBytes(a, b) {
  if (a.length !== b.length) return false;
  let diff = 0;
  for (let i = 0; i < a.length; i++) diff |= a[i] ^ b[i];
  return diff === 0;
}

// discretpeer/tokens.py derive_token(meeting, window)
const SALT = enc.encode('discretpeer/v1');
const TOKEN_LABEL = enc.encode('discretpeer/v1 meeting token');
export async function deriveToken(meeting, window) {
  let info = TOKEN_LABEL;
  if (window !== undefined && window !== null) {
    const w = new Uint8Array(8);
    new DataView(w.buffer).setBigUint64(0, BigInt(window));
    info = concat(TOKEN_LABEL, enc.encode('/'), w);
  }
  return hex(await hkdf(meeting, SALT, info, 32));
}
export const ROTATION_SECONDS = 24 * 3600;
export async function meetingTokens(meeting, now = Date.now() / 1000) {
  const w = Math.floor(now / ROTATION_SECONDS);
  return [await deriveToken(meeting, w), await deriveToken(meeting, w - 1)];
}
export async function meetingSecret(key) {
  return hkdf(key, SALT, enc.encode('discretpeer/web meeting v1'), 32);
}

// --- pairing code (discretpeer/web/pairing.py) ---
export const ALPHABET = '0123456789ABCDEFGHJKMNPQRSTVWXYZ';
export function parseCode(text) {
  const cleaned = text.toUpperCase().replace(/[-\s]/g, '').replace(/O/g, '0').replace(/[IL]/g, '1');
  if (cleaned.length !== 10 || [...cleaned].some((c) => !ALPHABET.includes(c))) {
    throw new Error('a pairing code is 4+6 symbols like K7Q2-9XMT4H');
  }
  return { room: cleaned.slice(0, 4), password: cleaned.slice(4) };
}
export const pairingToken = (room) => deriveToken(enc.encode('discretpeer/web pairing/' + room), null);

// --- SPAKE2, side A ---
function randomScalar() {
  const bytes = crypto.getRandomValues(new Uint8Array(64));
  const s = bigFromBytesBE(bytes) % L;
  return s === 0n ? 1n : s;
}

export class Spake2A {
  constructor(password, idA, idB) {
    this.pw = enc.encode(password);
    this.idA = enc.encode(idA);
    this.idB = enc.encode(idB);
  }
  async start() {
    const oversized = await hkdf(this.pw, new Uint8Array(), enc.encode('SPAKE2 pw'), 48);
    this.pwScalar = bigFromBytesBE(oversized) % L;
    this.x = randomScalar();
    const X = Point.BASE.multiply(this.x).add(M.multiply(this.pwScalar));
    this.outbound = X.toBytes();
    return concat(enc.encode('A'), this.outbound);
  }
  async finish(message) {
    if (message.length !== 33 || message[0] !== 0x42) throw new Error('SPAKE2: not a side-B message');
    const inbound = message.slice(1);
    const Y = Point.fromBytes(inbound);
    if (Y.is0() || !Y.isTorsionFree()) throw new Error('SPAKE2: element not in the right group');
    if (equalBytes(inbound, this.outbound)) throw new Error('SPAKE2: reflected message');
    const K = Y.add(N.multiply(this.pwScalar).negate()).multiply(this.x);
    const transcript = concat(
      await sha256(this.pw), await sha256(this.idA), await sha256(this.idB), this.outbound, inbound, K.toBytes(),
    );
    return sha256(transcript);
  }
}
