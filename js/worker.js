// The engine's module worker: a Host wired to postMessage. The page never runs model code.
import { Host } from "./host.js";

const host = new Host((msg) => self.postMessage(msg));
self.onmessage = (e) => host.handle(e.data);
