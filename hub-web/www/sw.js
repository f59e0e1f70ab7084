// The phone page's service worker: the page's own files are kept (cache first), so that an
// installed page keeps running the code it was installed with, and starts without the network.
// A new build has a new VERSION: its files are fetched whole, then the old ones dropped.
const VERSION = "__VERSION__";
const FILES = ["./", "index.html", "app.js", "app.css", "manifest.webmanifest", "icon.svg",
  "pkg/hub_web.js", "pkg/hub_web_bg.wasm"];

self.addEventListener("install", (event) => {
  event.waitUntil(caches.open(VERSION).then((cache) => cache.addAll(FILES)));
});

self.addEventListener("activate", (event) => {
  event.waitUntil(caches.keys().then((keys) =>
    Promise.all(keys.filter((k) => k !== VERSION).map((k) => caches.delete(k)))));
});

self.addEventListener("fetch", (event) => {
  const url = new URL(event.request.url);
  if (event.request.method !== "GET" || url.origin !== self.location.origin) return;
  event.respondWith(caches.open(VERSION).then(async (cache) => {
    const kept = await cache.match(event.request, { ignoreSearch: true });
    return kept || fetch(event.request);
  }));
});
