// Model bytes, in file order, from a URL (downloaded in Range chunks, each chunk kept as its
// own Cache Storage entry so an interrupted download resumes where it stopped and a second
// visit makes no weight request) or from a local File/Blob. Only a few chunks are in memory
// at once; the engine writes each one to GPU buffers before the next is read.

import { DownloadError, QuotaExceededError } from "./errors.js";

export const DEFAULT_CACHE = "webvlm-weights-v1";
export const CHUNK_BYTES = 32 << 20;
const PARALLEL = 3;

/** Cache key of bytes [start, end) of `url` (the query keeps keys distinct; fragments are ignored). */
function chunkKey(url, start, end) {
  return `${url}${url.includes("?") ? "&" : "?"}webvlm-bytes=${start}-${end}`;
}
const manifestKey = (url) => `${url}${url.includes("?") ? "&" : "?"}webvlm-manifest`;

/** `source` as {url} | {blob}: a string is a URL, a Blob/File is read locally. */
export function normalizeSource(source) {
  if (typeof source === "string" || source instanceof URL) return { url: new URL(source, globalThis.location?.href).href };
  if (typeof Blob !== "undefined" && source instanceof Blob) return { blob: source, name: source.name ?? "blob" };
  if (source && typeof source === "object" && (source.url || source.blob)) return source;
  throw new TypeError("a model source is a URL string, a File/Blob, or {url} / {blob}");
}

/** A URL of the first of split GGUF parts (`name-00001-of-00003.gguf`, llama.cpp's
 * `gguf-split` naming) stands for all its parts, in order; anything else for itself. */
export function expandSplitParts(source) {
  const url = typeof source === "string" || source instanceof URL ? String(source) : null;
  const m = url?.match(/^(.*)-00001-of-(\d{5})\.gguf(\?.*)?$/);
  if (!m) return [source];
  const count = Number(m[2]);
  return Array.from({ length: count }, (_, i) => `${m[1]}-${String(i + 1).padStart(5, "0")}-of-${m[2]}.gguf${m[3] ?? ""}`);
}

/** Total size of a source, from the cache manifest when there is one (no request). */
async function describe(src, cache, chunkBytes) {
  if (src.blob) return { size: src.blob.size, cached: false, sha256: src.sha256 ?? null };
  const hit = cache && (await cache.match(manifestKey(src.url)));
  if (hit) return { ...(await hit.json()), cached: true };
  let r;
  try {
    r = await fetch(src.url, { headers: { Range: "bytes=0-0" } });
  } catch (e) {
    throw new DownloadError(`${src.url}: ${e.message}`);
  }
  if (!r.ok) throw new DownloadError(`${src.url}: HTTP ${r.status}`);
  await r.body?.cancel();
  const range = r.headers.get("Content-Range");
  if (r.status === 206 && !range) {
    throw new DownloadError(`${src.url}: the server hides Content-Range from this page (CORS Access-Control-Expose-Headers)`);
  }
  const size = range ? Number(range.split("/")[1]) : Number(r.headers.get("Content-Length"));
  if (!(size > 0)) throw new DownloadError(`${src.url}: the server gave no size (Content-Range / Content-Length)`);
  if (r.status !== 206 && size > chunkBytes) throw new DownloadError(`${src.url}: the server does not support Range requests`);
  return { size, cached: false, sha256: src.sha256 ?? publishedSha256(r.headers) };
}

/** The SHA-256 a server publishes for a file: Hugging Face's `X-Linked-ETag` (LFS files), or
 * an `ETag` that is one (64 hex digits). */
function publishedSha256(headers) {
  for (const name of ["X-Linked-ETag", "ETag"]) {
    const v = headers.get(name)?.replace(/^W\//, "").replaceAll('"', "").toLowerCase();
    if (v && /^[0-9a-f]{64}$/.test(v)) return v;
  }
  return null;
}

/** Whether `url` is stored whole in the cache (a manifest is written once every chunk is). */
export async function isCached(url, cacheName = DEFAULT_CACHE) {
  if (cacheName === null || typeof caches === "undefined") return false;
  return !!(await (await caches.open(cacheName)).match(manifestKey(url)));
}

/**
 * Stores a file made in the page (a repository converted while it loaded: its GGUF) as the
 * chunks and manifest of `url`, as if it had been downloaded, so that `readSources` reads it
 * from the cache. Bytes are written in order; one chunk is held at a time. A full cache ends
 * the writing (`failed` says why) without failing the caller: the file is simply not kept.
 */
export class CacheWriter {
  constructor(cache, url, chunkBytes = CHUNK_BYTES) {
    Object.assign(this, { cache, url, chunkBytes, size: 0, failed: null });
    this.buffer = new Uint8Array(chunkBytes);
    this.filled = 0;
  }

  async write(bytes) {
    for (let at = 0; at < bytes.length && !this.failed;) {
      const n = Math.min(bytes.length - at, this.chunkBytes - this.filled);
      this.buffer.set(bytes.subarray(at, at + n), this.filled);
      this.filled += n;
      at += n;
      if (this.filled === this.chunkBytes) await this.flush();
    }
  }

  async flush() {
    const start = this.size;
    this.size += this.filled;
    const chunk = this.buffer.slice(0, this.filled);
    this.filled = 0;
    try {
      await this.cache.put(chunkKey(this.url, start, this.size), new Response(chunk));
    } catch (e) {
      this.failed = e;
      await deleteCached(this.url, null, this.cache);
    }
  }

  /** Stores the last chunk and the manifest; true when the whole file was kept. */
  async finish() {
    if (this.filled && !this.failed) await this.flush();
    if (this.failed) return false;
    const manifest = { size: this.size, chunk: this.chunkBytes, sha256: null, verified: true };
    await this.cache.put(manifestKey(this.url), new Response(JSON.stringify(manifest)));
    return true;
  }
}

/** Records in the manifest that the cached file hashed to its published SHA-256, so later
 * visits skip hashing it. */
export async function markVerified(url, cacheName = DEFAULT_CACHE) {
  const cache = await caches.open(cacheName);
  const hit = await cache.match(manifestKey(url));
  if (hit) await cache.put(manifestKey(url), new Response(JSON.stringify({ ...(await hit.json()), verified: true })));
}

/** Asks for persistent storage and fails early when `bytes` more cannot fit. */
export async function checkQuota(bytes) {
  const storage = globalThis.navigator?.storage;
  if (!storage?.estimate) return;
  try { await storage.persist?.(); } catch { /* best effort */ }
  const { usage = 0, quota = Infinity } = await storage.estimate();
  if (usage + bytes > quota) {
    const mb = (n) => (n / 2 ** 20).toFixed(0);
    throw new QuotaExceededError(`the model needs ${mb(bytes)} MiB of storage; ${mb(quota - usage)} MiB are free`);
  }
}

/** Bytes of the first header request; each next one asks for four times more. */
const HEAD_BYTES = 64 << 10;

/**
 * Reads the start of `src` until `push(bytes)` returns true (its header is complete) or the
 * file ends: from the cache where the file's chunks are stored (all of them, or those an
 * interrupted download kept), else with small Range requests that are not cached (the memory
 * plan reads the headers before the download starts).
 */
export async function readHead(src, { cacheName = DEFAULT_CACHE, chunkBytes = CHUNK_BYTES, signal, push }) {
  if (src.blob) {
    for (let start = 0, size = HEAD_BYTES; start < src.blob.size; start += size, size *= 4) {
      if (push(new Uint8Array(await src.blob.slice(start, start + size).arrayBuffer()))) return;
    }
    return;
  }
  const cache = cacheName !== null && typeof caches !== "undefined" ? await caches.open(cacheName) : null;
  const hit = cache && (await cache.match(manifestKey(src.url)));
  const stored = hit ? await hit.json() : null;
  const chunk = stored?.chunk ?? chunkBytes;
  for (let pos = 0, size = HEAD_BYTES; !stored || pos < stored.size;) {
    const at = Math.floor(pos / chunk) * chunk;
    const cached = cache && (await cache.match(chunkKey(src.url, at, stored ? Math.min(stored.size, at + chunk) : at + chunk)));
    let bytes;
    if (cached) {
      bytes = new Uint8Array(await cached.arrayBuffer()).subarray(pos - at);
    } else {
      let r;
      try {
        r = await fetch(src.url, { headers: { Range: `bytes=${pos}-${pos + size - 1}` }, signal });
      } catch (e) {
        throw new DownloadError(`${src.url}: ${e.message}`);
      }
      if (r.status === 416) return; // past the end: the file is shorter than its header says
      if (r.status !== 206 && !(r.status === 200 && pos === 0)) throw new DownloadError(`${src.url} header: HTTP ${r.status}`);
      bytes = new Uint8Array(await r.arrayBuffer());
      if (r.status === 200 || bytes.length < size) {
        push(bytes); // the whole file, or its end
        return;
      }
      size *= 4;
    }
    if (push(bytes)) return;
    pos += bytes.length;
  }
}

/**
 * Reads `sources` (in order) and calls `sink(index, bytes)` with each chunk in file order;
 * a sink that returns `true` has read enough of that source (a split model's header pass).
 * `onBytes(n, fromNetwork)` reports progress; `parallel` chunks are fetched at once.
 * Returns the total size.
 */
export async function readSources(sources, { cacheName = DEFAULT_CACHE, chunkBytes = CHUNK_BYTES, sink, onBytes, onStart, onDescribed, signal, parallel = PARALLEL }) {
  // `cacheName: null` streams the weights without storing them.
  const cache = cacheName !== null && typeof caches !== "undefined" ? await caches.open(cacheName) : null;
  const described = [];
  for (const s of sources) described.push(await describe(s, cache, chunkBytes));
  const total = described.reduce((a, d) => a + d.size, 0);
  const missing = described.reduce((a, d, i) => a + (sources[i].url && !d.cached ? d.size : 0), 0);
  if (missing > 0 && cache) await checkQuota(missing);
  onStart?.(total);
  described.forEach((d, i) => onDescribed?.(i, d));
  for (let i = 0; i < sources.length; i++) {
    const src = sources[i];
    const { size } = described[i];
    // A cached model keeps the chunking it was stored with.
    const chunk = described[i].chunk ?? chunkBytes;
    const ranges = [];
    for (let start = 0; start < size; start += chunk) ranges.push([start, Math.min(size, start + chunk)]);
    const read = src.blob
      ? async ([s, e]) => ({ bytes: new Uint8Array(await src.blob.slice(s, e).arrayBuffer()), network: false })
      : (r) => cachedChunk(cache, src.url, r, signal);
    // A chunk that fails while an earlier one is awaited must not count as unhandled.
    const load = (r) => {
      const p = read(r);
      p.catch(() => {});
      return p;
    };
    // Keep PARALLEL chunks in flight, hand them over in order.
    const inFlight = ranges.slice(0, parallel).map(load);
    let whole = true;
    for (let k = 0; k < ranges.length; k++) {
      if (signal?.aborted) throw new DownloadError("the download was cancelled");
      const { bytes, network } = await inFlight[k];
      inFlight[k] = null;
      if (k + parallel < ranges.length) inFlight.push(load(ranges[k + parallel]));
      onBytes?.(bytes.length, network);
      if ((await sink(i, bytes)) === true) {
        whole = false;
        break;
      }
    }
    if (whole && cache && src.url && !described[i].cached) {
      const manifest = { size, chunk, sha256: described[i].sha256 ?? null, verified: false };
      await cache.put(manifestKey(src.url), new Response(JSON.stringify(manifest)));
    }
  }
  return total;
}

async function cachedChunk(cache, url, [start, end], signal) {
  const key = chunkKey(url, start, end);
  const hit = cache && (await cache.match(key));
  if (hit) return { bytes: new Uint8Array(await hit.arrayBuffer()), network: false };
  let r;
  try {
    r = await fetch(url, { headers: { Range: `bytes=${start}-${end - 1}` }, signal });
  } catch (e) {
    throw new DownloadError(`${url} bytes ${start}-${end - 1}: ${e.message}`);
  }
  if (r.status !== 206 && !(r.status === 200 && start === 0)) throw new DownloadError(`${url} bytes ${start}-${end - 1}: HTTP ${r.status}`);
  let bytes = new Uint8Array(await r.arrayBuffer());
  if (r.status === 200) bytes = bytes.subarray(0, end - start);
  if (bytes.length !== end - start) throw new DownloadError(`${url} bytes ${start}-${end - 1}: got ${bytes.length} bytes`);
  if (cache) {
    try {
      await cache.put(key, new Response(bytes));
    } catch (e) {
      if (e?.name === "QuotaExceededError") throw new QuotaExceededError(`Cache Storage is full: ${e.message}`);
      throw e;
    }
  }
  return { bytes, network: true };
}

/** What the weight cache holds: [{url, bytes, chunks, size, complete}] and the total
 * (`size` and `complete` come from the manifest written when a download finishes). */
export async function cacheContents(cacheName = DEFAULT_CACHE) {
  const cache = await caches.open(cacheName);
  const byUrl = new Map();
  for (const req of await cache.keys()) {
    const u = new URL(req.url);
    const range = u.searchParams.get("webvlm-bytes");
    const whole = u.searchParams.has("webvlm-file"); // a repository's small file (repo.js)
    for (const k of ["webvlm-bytes", "webvlm-manifest", "webvlm-file"]) u.searchParams.delete(k);
    const e = byUrl.get(u.href) ?? { url: u.href, bytes: 0, chunks: 0, size: null, complete: false };
    if (whole) {
      e.size = e.bytes = (await (await cache.match(req)).arrayBuffer()).byteLength;
      e.complete = true;
    } else if (range) {
      const [s, t] = range.split("-").map(Number);
      e.bytes += t - s;
      e.chunks += 1;
    } else {
      e.size = (await (await cache.match(req)).json()).size;
      e.complete = true;
    }
    byUrl.set(u.href, e);
  }
  const entries = [...byUrl.values()];
  return { entries, bytes: entries.reduce((a, e) => a + e.bytes, 0) };
}

/** Deletes one model's chunks (or the whole cache when `url` is omitted). */
export async function deleteCached(url, cacheName = DEFAULT_CACHE, cache = null) {
  if (!url) return caches.delete(cacheName);
  cache ??= await caches.open(cacheName);
  for (const req of await cache.keys()) {
    const u = new URL(req.url);
    for (const k of ["webvlm-bytes", "webvlm-manifest", "webvlm-file"]) u.searchParams.delete(k);
    if (u.href === url) await cache.delete(req);
  }
  return true;
}
