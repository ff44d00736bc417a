// The discretpeer browser shell: pair with a device by short code, then open a WebRTC data channel to
// it through the beacon's signalling room and run its shell in xterm.js. The browser's identity is an
// Ed25519 key made by WebCrypto, non-extractable, kept in IndexedDB; each session is bound to both
// identities by signatures over this session's two DTLS fingerprints.
import { Terminal } from './vendor/xterm.mjs';
import { FitAddon } from './vendor/addon-fit.mjs';
import {
  Spake2A, b64, unb64, concat, hmac, equalBytes, meetingSecret, meetingTokens, parseCode, pairingToken,
} from './dpcrypto.js';

const enc = new TextEncoder();
// the beacon's STUN servers, written into the page by the beacon
const pageStun = (document.querySelector('meta[name="dp-stun"]')?.content || '').split(',').filter(Boolean);
const $ = (id) => document.getElementById(id);
const state = { status: '', devices: [], path: '', rtt: null, events: [], bound: false, exit: null };
window.dp = { state };
// when each phase of opening a shell ended (ms since navigation start), for the lab's timing table
state.marks = [];
const mark = (what) => { state.marks.push([Math.round(performance.now()), what]); };
mark('app.js runs');

function setStatus(text) {
  state.status = text;
  state.events.push([performance.now(), text]);
  $('status').textContent = text;
}

// --- storage: IndexedDB (the private key never leaves WebCrypto: extractable = false) ---
function idb() {
  return new Promise((resolve, reject) => {
    const req = indexedDB.open('discretpeer', 1);
    req.onupgradeneeded = () => { req.result.createObjectStore('kv'); };
    req.onsuccess = () => resolve(req.result);
    req.onerror = () => reject(req.error);
  });
}
async function kvGet(key) {
  const db = await idb();
  return new Promise((resolve, reject) => {
    const req = db.transaction('kv').objectStore('kv').get(key);
    req.onsuccess = () => resolve(req.result);
    req.onerror = () => reject(req.error);
  });
}
async function kvPut(key, value) {
  const db = await idb();
  return new Promise((resolve, reject) => {
    const tx = db.transaction('kv', 'readwrite');
    tx.objectStore('kv').put(value, key);
    tx.oncomplete = () => resolve();
    tx.onerror = () => reject(tx.error);
  });
}

async function identity() {
  let keys = await kvGet('identity');
  if (!keys) {
    keys = await crypto.subtle.generateKey({ name: 'Ed25519' }, false, ['sign', 'verify']);
    await kvPut('identity', keys);
  }
  const pub = new Uint8Array(await crypto.subtle.exportKey('raw', keys.publicKey));
  return { keys, pub };
}

// --- signalling: one WebSocket to the beacon, rooms by token ---
class Signal {
  constructor() {
    this.handlers = new Map();
    this.present = new Map();
    this.waiters = [];
    this.tokens = new Set();
  }
  open() {
    const url = `${location.protocol === 'https:' ? 'wss' : 'ws'}://${location.host}/ws`;
    // the page's inline script opened it during the HTML parse, two round trips before this module runs
    const early = window.dpSocket;
    window.dpSocket = null;
    this.ws = early && early.readyState <= WebSocket.OPEN ? early : new WebSocket(url);
    this.ready = new Promise((resolve, reject) => {
      if (this.ws.readyState === WebSocket.OPEN) { mark('websocket open (early)'); resolve(); }
      this.ws.onopen = () => { mark('websocket open'); resolve(); };
      this.ws.onerror = () => reject(new Error('cannot reach the beacon'));
    });
    this.ws.onclose = () => setStatus('signalling connection closed');
    this.ws.onmessage = (ev) => {
      const m = JSON.parse(ev.data);
      if (m.t === 'present') this.present.set(m.token, m.count);
      if (m.t === 'msg' && this.handlers.has(m.token)) this.handlers.get(m.token)(m.data);
      for (const w of [...this.waiters]) w(m);
    };
    return this.ready;
  }
  send(obj) { this.ws.send(JSON.stringify({ v: 1, ...obj })); }
  listen(tokens, handler) {
    for (const t of tokens) { this.tokens.add(t); this.handlers.set(t, handler); }
    this.send({ t: 'listen', tokens: [...this.tokens] });
  }
  wait(pred, ms, what) {
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => { this.waiters = this.waiters.filter((w) => w !== fn); reject(new Error(what)); }, ms);
      const fn = (m) => { if (pred(m)) { clearTimeout(timer); this.waiters = this.waiters.filter((w) => w !== fn); resolve(m); } };
      this.waiters.push(fn);
    });
  }
}
const signal = new Signal();

// --- pairing ---
async function pair(code, me) {
  const { room, password } = parseCode(code);
  const token = await pairingToken(room);
  const inbox = [];
  let wake = null;
  signal.listen([token], (data) => { inbox.push(data); if (wake) wake(); });
  const next = (ms) => new Promise((resolve, reject) => {
    const t = setTimeout(() => reject(new Error('the device did not answer (is `discretpeer web invite` running?)')), ms);
    const take = () => { if (inbox.length) { clearTimeout(t); wake = null; resolve(inbox.shift()); } else wake = take; };
    take();
  });
  await signal.wait((m) => m.t === 'present' && m.token === token && m.count >= 2, 10000,
    'nobody waits with that code (typo, or the invite expired)');
  setStatus('pairing…');
  const spake = new Spake2A(password, 'discretpeer/web browser', 'discretpeer/web device');
  signal.send({ t: 'send', token, data: { k: 'pake', m: b64(await spake.start()) } });
  const first = await next(10000);
  if (first.k === 'refused') throw new Error(`pairing refused: ${first.reason}`);
  const key = await spake.finish(unb64(first.m));
  const devicePub = unb64(first.pub);
  if (!equalBytes(unb64(first.mac), await hmac(key, enc.encode('device'), devicePub))) {
    signal.send({ t: 'send', token, data: { k: 'abort', reason: 'wrong code' } });  // the device burns the code
    throw new Error('pairing failed: wrong code (or someone in the middle); ask for a new code');
  }
  const name = `browser ${navigator.platform || ''}`.trim().slice(0, 64);
  signal.send({ t: 'send', token, data: { k: 'hello', pub: b64(me.pub), name,
    mac: b64(await hmac(key, enc.encode('browser'), devicePub, me.pub)) } });
  const welcome = await next(10000);
  if (welcome.k !== 'welcome') throw new Error(`pairing refused: ${welcome.reason || welcome.k}`);
  const device = { pub: b64(devicePub), name: String(welcome.name).slice(0, 64), meeting: b64(await meetingSecret(key)) };
  const devices = ((await kvGet('devices')) || []).filter((d) => d.pub !== device.pub);
  devices.push(device);
  await kvPut('devices', devices);
  return device;
}

// --- a session: WebRTC offer through the room, binding proof, then the terminal ---
function fingerprint(sdp) {
  // exactly one fingerprint line, sha-256 (discretpeer/web/binding.py says why)
  const found = [...new Set([...sdp.matchAll(/^a=fingerprint:(\S*) ?(.*?)\s*$/gm)].map((m) => `${m[1].toLowerCase()} ${m[2].toUpperCase()}`))];
  if (found.length !== 1) throw new Error(`SDP must carry exactly one DTLS fingerprint (found ${found.length})`);
  const [algo, value] = found[0].split(' ');
  if (algo !== 'sha-256' || !/^([0-9A-F]{2}:){31}[0-9A-F]{2}$/.test(value)) throw new Error('the DTLS fingerprint must be sha-256');
  return value;
}
const bindingMessage = (role, browserFp, deviceFp) => concat(
  enc.encode('discretpeer/web binding v1'), new Uint8Array([0]), enc.encode(role), new Uint8Array([0]),
  enc.encode(browserFp), new Uint8Array([0]), enc.encode(deviceFp));

// One WebRTC attempt: offer (all candidates gathered), answer through the room, data channel open.
async function connectOnce(device, tokens, iceServers, policy, waitMs, abort = {}) {
  const aborted = new Promise((_, reject) => { abort.now = reject; });
  aborted.catch(() => {});
  const token = tokens[0];
  const sid = b64(crypto.getRandomValues(new Uint8Array(12)));
  let answer = null;
  const answered = new Promise((resolve) => { answer = resolve; });
  signal.listen(tokens, (data) => { if (data.id === sid) answer(data); });
  const pc = new RTCPeerConnection({ iceServers, iceTransportPolicy: policy });
  const channel = pc.createDataChannel('shell');
  channel.binaryType = 'arraybuffer';
  try {
    pc.oniceconnectionstatechange = () => mark(`ice ${pc.iceConnectionState}`);
    pc.onconnectionstatechange = () => mark(`pc ${pc.connectionState}`);
    // trickle ICE: the offer leaves at once, each candidate follows as it is found (the server-reflexive
    // one takes a round trip to STUN, which now overlaps with the offer's way to the device and its answer)
    pc.onicecandidate = (ev) => {
      if (ev.candidate && !ev.candidate.candidate) return;  // Chromium's empty end-of-generation marker
      if (!ev.candidate) mark('candidates gathered');
      signal.send({ t: 'send', token, data: { k: 'candidate', id: sid, c: ev.candidate ? ev.candidate.candidate : null } });
    };
    const offer = await pc.createOffer();
    await pc.setLocalDescription(offer);
    mark('offer made');
    setStatus(`connecting to ${device.name}…`);
    // relay: the device gathers its own TURN candidate only for an attempt that may use a relay
    const relay = iceServers.some((s) => s.username);
    signal.send({ t: 'send', token, data: { k: 'offer', id: sid, sdp: offer.sdp, relay } });
    const reply = await Promise.race([answered, aborted, new Promise((_, reject) => setTimeout(
      () => reject(new Error(`${device.name} did not answer`)), 10000))]);
    if (reply.k !== 'answer') {
      const e = new Error(`refused by ${device.name}: ${reply.reason}`);
      e.refused = true;
      throw e;
    }
    mark('answer received');
    await pc.setRemoteDescription({ type: 'answer', sdp: reply.sdp });
    if (pc.sctp) pc.sctp.transport.onstatechange = () => mark(`dtls ${pc.sctp.transport.state}`);
    await new Promise((resolve, reject) => {
      channel.onopen = () => { mark('channel open'); resolve(); };
      pc.onconnectionstatechange = () => {
        mark(`pc ${pc.connectionState}`); if (pc.connectionState === 'failed') reject(new Error('no path to the device')); };
      setTimeout(() => reject(new Error(`no path to ${device.name}`)), waitMs);
    });
    return { pc, channel };
  } catch (e) {
    pc.close();
    throw e;
  }
}

let term = null;
let fit = null;
async function openShell(device, me, opts = {}) {
  const t0 = performance.now();
  const tokens = await meetingTokens(unb64(device.meeting));
  const token = tokens[0];
  setStatus(`looking for ${device.name}…`);
  const offline = `${device.name} is offline (or no longer has this browser paired)`;
  const present = signal.wait((m) => m.t === 'present' && tokens.includes(m.token) && m.count >= 2, 8000, offline);
  present.catch(() => {});
  signal.listen(tokens, () => {});
  // asked at once (the beacon handles listen, then turn, in order): answered only if the device is there
  signal.send({ t: 'turn', token });
  const asked = signal.wait((m) => m.t === 'turn' || m.t === 'error', 3000, 'no answer from the beacon');
  // the page carries the beacon's STUN servers: the direct attempt starts now, not a round trip later
  let early = null;
  if (pageStun.length && !opts.relay) {
    const abort = {};
    early = { abort, attempt: connectOnce(device, tokens, [{ urls: pageStun }], 'all', 2500, abort) };
    early.attempt.catch(() => {});
  }
  let creds = await asked;
  mark(`ice servers: ${creds.t} ${creds.reason || ''}`);
  if (creds.t === 'error') {  // the device may be reconnecting to the beacon: wait for it, then ask again
    if (early) early.abort.now(new Error(offline));  // that offer reached nobody
    early = null;
    await present;
    signal.send({ t: 'turn', token });
    creds = await signal.wait((m) => m.t === 'turn' || m.t === 'error', 3000, 'no answer from the beacon');
  }
  const stun = [];
  let turn = null;
  if (creds.t === 'turn') {
    if (creds.urls && creds.urls.length) stun.push({ urls: creds.urls });
    if (creds.turn_urls) turn = { urls: creds.turn_urls, username: creds.username, credential: creds.credential };
  }
  let conn;
  if (opts.relay && turn) {  // relay only: to check the relay, or to hide this browser's addresses from the device
    conn = await connectOnce(device, tokens, [...stun, turn], 'relay', 15000);
  } else if (turn) {
    // direct first: with a relay candidate in the same attempt Chromium settles on the relay pair when
    // it answers first and may keep it; a direct path between cone NATs answers within ~1 s here
    try {
      conn = await (early ? early.attempt : connectOnce(device, tokens, stun, 'all', 2500));
    } catch (e) {
      if (e.refused) throw e;
      setStatus(`no direct path to ${device.name}: through the relay…`);
      conn = await connectOnce(device, tokens, [...stun, turn], 'all', 15000);
    }
  } else {
    try {
      conn = await (early ? early.attempt : connectOnce(device, tokens, stun, 'all', 15000));
    } catch (e) {  // the early attempt gives up after 2.5 s: without a relay, wait longer
      if (e.refused || !early) throw e;
      conn = await connectOnce(device, tokens, stun, 'all', 15000);
    }
  }
  const { pc, channel } = conn;
  window.dp.pc = pc;
  const browserFp = fingerprint(pc.localDescription.sdp);
  const deviceFp = fingerprint(pc.remoteDescription.sdp);
  const sig = new Uint8Array(await crypto.subtle.sign('Ed25519', me.keys.privateKey, bindingMessage('browser', browserFp, deviceFp)));
  window.dp.lastProof = { pub: b64(me.pub), sig: b64(sig) };
  term.reset();
  fit.fit();
  channel.send(JSON.stringify({ pub: b64(me.pub), sig: b64(sig), cols: term.cols, rows: term.rows }));
  mark('proof sent');
  const devKey = await crypto.subtle.importKey('raw', unb64(device.pub), { name: 'Ed25519' }, false, ['verify']);
  let bound = false;
  const pending = [];
  channel.onmessage = async (ev) => {
    if (typeof ev.data === 'string') {
      const m = JSON.parse(ev.data);
      if (!bound && m.sig) {
        const ok = await crypto.subtle.verify('Ed25519', devKey, unb64(m.sig), bindingMessage('device', browserFp, deviceFp));
        if (!ok || m.pub !== device.pub) { setStatus('the device failed to prove its identity: closed'); pc.close(); return; }
        bound = true;
        mark('device proof checked');
        state.bound = true;
        state.openMs = performance.now() - t0;
        setStatus(`shell on ${device.name}`);
        for (const d of pending.splice(0)) term.write(d);
      } else if (m.error) { setStatus(`refused: ${m.error}`); }
      else if ('exit' in m) { state.exit = m.exit; setStatus(`shell exited (${m.exit})`); }
      return;
    }
    const data = new Uint8Array(ev.data);
    if (!state.firstBytes) { state.firstBytes = true; mark('first shell bytes'); }
    if (bound) term.write(data); else pending.push(data);
  };
  term.onData((d) => { if (bound && channel.readyState === 'open') channel.send(enc.encode(d)); });
  term.onResize(({ cols, rows }) => { if (channel.readyState === 'open') channel.send(JSON.stringify({ resize: [cols, rows] })); });
  window.addEventListener('resize', () => fit.fit());
  watchPath(pc);
  term.focus();
  return channel;
}

function watchPath(pc) {
  const tick = async () => {
    if (pc.connectionState === 'closed') return;
    const stats = await pc.getStats();
    stats.forEach((s) => {
      if (s.type === 'candidate-pair' && s.nominated && s.state === 'succeeded') {
        const local = stats.get(s.localCandidateId);
        const remote = stats.get(s.remoteCandidateId);
        const relayed = (local && local.candidateType === 'relay') || (remote && remote.candidateType === 'relay');
        state.path = relayed ? 'relay' : 'direct';
        state.pair = `${local && local.candidateType}/${remote && remote.candidateType}`;
        state.rtt = s.currentRoundTripTime;
        $('path').textContent = `${state.path}${s.currentRoundTripTime !== undefined ? `, ${(s.currentRoundTripTime * 1000).toFixed(0)} ms` : ''}`;
      }
    });
    setTimeout(tick, 2000);
  };
  tick();
}

window.dp.terminalText = () => {
  const buf = term.buffer.active;
  const lines = [];
  for (let i = 0; i < buf.length; i++) lines.push(buf.getLine(i).translateToString(true));
  return lines.join('\n');
};

async function showDevices(me) {
  const devices = (await kvGet('devices')) || [];
  state.devices = devices.map((d) => d.name);
  const list = $('devices');
  list.replaceChildren();
  for (const d of devices) {
    const li = document.createElement('li');
    const button = document.createElement('button');
    button.textContent = d.name;
    button.onclick = () => openShell(d, me).catch((e) => setStatus(e.message));
    li.append(button);
    list.append(li);
  }
}

async function main() {
  term = new Terminal({ convertEol: false, scrollback: 5000 });
  fit = new FitAddon();
  term.loadAddon(fit);
  window.dp.term = term;
  term.open($('terminal'));
  fit.fit();
  const opened = signal.open();  // the WebSocket handshake runs while IndexedDB answers
  const me = await identity();
  mark('identity loaded');
  $('me').textContent = `this browser: ${b64(me.pub)}`;
  await opened;
  await showDevices(me);
  window.dp.pair = async (code) => {
    try {
      const device = await pair(code, me);
      setStatus(`paired with ${device.name}`);
      await showDevices(me);
      return true;
    } catch (e) { setStatus(e.message); return false; }
  };
  window.dp.open = async (index = 0, opts = {}) => {
    const devices = (await kvGet('devices')) || [];
    try { window.dp.channel = await openShell(devices[index], me, opts); return true; } catch (e) { setStatus(e.message); return false; }
  };
  $('pair').onsubmit = (ev) => { ev.preventDefault(); window.dp.pair($('code').value); };
  setStatus('ready');
  const hash = new URLSearchParams(location.hash.slice(1));
  if (hash.has('open')) window.dp.open(Number(hash.get('open')), { relay: hash.get('relay') === '1' });
}
main().catch((e) => setStatus(`error: ${e.message}`));
