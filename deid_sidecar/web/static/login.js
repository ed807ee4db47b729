"use strict";
// Carry ?next= into the form and show a failed attempt; the server checks `next` is a local path.
const params = new URLSearchParams(location.search);
document.getElementById("next").value = params.get("next") || "/";
document.getElementById("failed").hidden = !params.has("failed");
document.getElementById("locked").hidden = !params.has("locked");
document.getElementById("locked-s").textContent = params.get("locked") || "";
