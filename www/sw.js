// The demo's service worker: keeps the app shell (the page, its modules and styles, the wasm
// package, the vendored Markdown libraries) in Cache Storage so that the page opens with no
// network once it has been opened online; the model itself is in the package's own cache
// ("webvlm-weights-v1", see pkg/source.js), so a cached model then loads and answers offline.
//
// - offline-files.js (written by `./build.sh wasm`) lists the shell's files and a hash of their
//   contents; a rebuild changes it, which makes the browser install this worker again, and the
//   new version precaches every file before it takes over (the old version's cache is deleted).
// - The shell is served network first: online, the page always gets the server's current files
//   (and the cache is refreshed with them); only when the network fails does it come from the
//   cache, under the file's URL without its query (index.html?model=…&autoload=1 is index.html;
//   the folder itself is index.html too).
// - Nothing else is touched: model downloads (Range requests, other origins, anything not in
//   the list) go to the network as if there were no service worker.

importScripts("./offline-files.js"); // self.WEBVLM_OFFLINE = { version, files }

const { version, files } = self.WEBVLM_OFFLINE;
const CACHE = `webvlm-app-${version}`;
const scope = new URL(self.registration.scope);
const shell = new Set(files.map((f) => new URL(f, scope).href));
const INDEX = new URL("index.html", scope).href;

self.addEventListener("install", (event) => {
  event.waitUntil((async () => {
    const cache = await caches.open(CACHE);
    await cache.addAll([...shell].map((url) => new Request(url, { cache: "reload" })));
    await self.skipWaiting();
  })());
});

self.addEventListener("activate", (event) => {
  event.waitUntil((async () => {
    for (const name of await caches.keys()) {
      if (name.startsWith("webvlm-app-") && name !== CACHE) await caches.delete(name);
    }
    await self.clients.claim();
  })());
});

/** The cache key of a request for the shell, or null when the request is not for it. */
function shellKey(request) {
  if (request.method !== "GET" || request.headers.has("range")) return null;
  const url = new URL(request.url);
  if (url.origin !== scope.origin || !url.pathname.startsWith(scope.pathname)) return null;
  const bare = url.origin + url.pathname;
  // The scope's folder itself is index.html; other pages on the origin are not the shell's.
  if (request.mode === "navigate" && bare === scope.href) return INDEX;
  return shell.has(bare) ? bare : null;
}

self.addEventListener("fetch", (event) => {
  const key = shellKey(event.request);
  if (key) event.respondWith(networkFirst(event, key));
});

async function networkFirst(event, key) {
  const cache = await caches.open(CACHE);
  let response;
  try {
    response = await fetch(event.request);
  } catch (e) {
    const hit = await cache.match(key);
    if (hit) return hit;
    throw e;
  }
  if (response.status === 200 && response.type === "basic") {
    // Refresh the cached copy when the file changed (its ETag), without holding the response.
    const copy = response.clone();
    event.waitUntil((async () => {
      const old = await cache.match(key);
      const etag = copy.headers.get("ETag");
      if (!old || !etag || old.headers.get("ETag") !== etag) await cache.put(key, copy);
    })().catch(() => {}));
  }
  return response;
}
