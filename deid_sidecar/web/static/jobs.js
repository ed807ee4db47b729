"use strict";
// Jobs page: upload with options, then poll the list for progress and the download links.
function row(job) {
  const done = job.state === "done";
  const links = done ? el("span", {},
      el("a", { href: `/api/jobs/${job.id}/result`, download: "", "data-role": "result", text: "result" }), " · ",
      el("a", { href: `/api/jobs/${job.id}/audit`, download: "", "data-role": "audit", text: "audit JSON" }))
    : el("span", { class: job.error ? "error" : "muted", text: job.error || "…" });
  return el("tr", { "data-job": job.id, "data-state": job.state },
    el("td", { text: job.filename }), el("td", { text: job.protect.join(", ") + (job.method ? ` (${job.method})` : "") }),
    el("td", { text: job.state }),
    el("td", {}, el("progress", { max: 1, value: job.progress }), ` ${job.frames}${job.total_frames ? "/" + job.total_frames : ""}`),
    el("td", {}, links));
}

async function refresh() {
  try {
    const data = await api("GET", "/api/jobs");
    document.querySelector("#jobs tbody").replaceChildren(...data.jobs.map(row));
    document.getElementById("jobs-hint").textContent =
      `${data.limit} job(s) run at a time; results are deleted ${Math.round(data.ttl_s / 60)} min after they finish.`;
  } catch (error) { document.getElementById("jobs-hint").textContent = error.message; }
}

document.getElementById("upload-form").addEventListener("submit", async event => {
  event.preventDefault();
  const form = event.target, note = document.getElementById("upload-message");
  const data = new FormData();
  const protect = ["face", "license_plate", "person"].filter(k => form.elements[k].checked);
  data.append("protect", protect.join(","));
  data.append("method", form.elements.method.value);
  data.append("file", form.elements.file.files[0]);
  note.textContent = "uploading…";
  try { const job = await api("POST", "/api/jobs", data); note.textContent = `queued ${job.filename}`; form.reset(); }
  catch (error) { note.textContent = error.message; }
  refresh();
});

(async () => { await setupHeader(); await refresh(); setInterval(refresh, 1000); })();
