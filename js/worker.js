// The engine's module worker: a Host wired to postMessage. The page never runs model code.
import { Host } from "./host.js";

const host = new Host((msg) => self.postMessage(msg));
// The page sends the messages of one task together (an array): requests made together are
// all queued before the first runs, so they can run as a group.
self.onmessage = (e) => [e.data].flat().forEach((m) => host.handle(m));
