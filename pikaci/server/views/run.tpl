% rebase('layout', title=title, slug=slug, refresh=refresh, logged_in=logged_in)
<h1 class="run-id">Run {{run.run_id}}</h1>
<dl class="facts">
  <dt>Status</dt><dd><span class="badge status-{{status}}" id="run-status">{{status}}</span></dd>
  <dt>Target</dt><dd>{{run.target_id or '-'}}{{(' · ' + run.target_description) if run.target_description else ''}}</dd>
  <dt>Started</dt><dd><time datetime="{{run.created_at}}" title="{{run.created_at}}">{{age}}</time></dd>
  <dt>Duration</dt><dd>{{duration}}</dd>
  % if run.git_head:
  <dt>Commit</dt><dd><code>{{run.git_head[:12]}}</code>{{' (dirty tree)' if run.git_dirty else ''}}</dd>
  % end
  % if run.rerun_of:
  <dt>Rerun of</dt><dd><a href="/repos/{{slug}}/runs/{{run.rerun_of}}">{{run.rerun_of}}</a></dd>
  % end
  % if run.message:
  <dt>Message</dt><dd class="message">{{run.message}}</dd>
  % end
</dl>

<h2>Jobs</h2>
<table class="jobs cards">
  <thead><tr><th>Job</th><th>Status</th><th>Runs on</th><th>Duration</th><th>Exit</th><th>Logs</th></tr></thead>
  <tbody>
  % for job in jobs:
  <tr class="job" data-job="{{job['id']}}">
    <td data-label="Job"><strong>{{job['id']}}</strong><br><small>{{job['description']}}</small>
      % if job['message']:
      <br><small class="message">{{job['message']}}</small>
      % end
    </td>
    <td data-label="Status"><span class="badge status-{{job['status']}}">{{job['status']}}</span>
      % if job['reused_from']:
      <br><small>reused from <a href="{{job['reused_url']}}">{{job['reused_from']}}</a></small>
      % end
    </td>
    <td data-label="Runs on">{{job['execution']}}</td>
    <td data-label="Duration">{{job['duration']}}</td>
    <td data-label="Exit">{{job['exit_code']}}</td>
    <td data-label="Logs">
      % for kind, url in job['logs'].items():
      <a class="log-link" href="{{url}}">{{kind}}</a>
      % end
      % if not job['logs']:
      <small>none</small>
      % end
    </td>
  </tr>
  % end
  </tbody>
</table>

<h2>Timeline</h2>
<figure class="timeline">{{!timeline}}</figure>

<h2>Prepared outputs</h2>
% if prepared:
<table class="prepared cards">
  <thead><tr><th>Node</th><th>Output</th><th>Store path</th><th>Mounts</th></tr></thead>
  <tbody>
  % for out in prepared:
  <tr class="prepared-output">
    <td data-label="Node">{{out['node_id']}}<br><small>{{out['installable']}}</small></td>
    <td data-label="Output">{{out['output_name']}}<br><small>{{out['residency']}}</small></td>
    <td data-label="Store path"><code class="path">{{out['realized_path']}}</code></td>
    <td data-label="Mounts">
      % for mount in out['mounts']:
      <code>{{mount}}</code><br>
      % end
    </td>
  </tr>
  % end
  </tbody>
</table>
% else:
<p class="empty">None recorded for this run.</p>
% end

% if uploads:
<h2>Uploads</h2>
<table class="uploads cards">
  <thead><tr><th>Kind</th><th>Subject</th><th>Size</th><th>Paths</th><th>Time</th></tr></thead>
  <tbody>
  % for up in uploads:
  <tr>
    <td data-label="Kind">{{up['kind']}}{{' (already there)' if up['skipped'] else ''}}</td>
    <td data-label="Subject"><code class="path">{{up['subject']}}</code></td>
    <td data-label="Size">{{up['size']}}</td>
    <td data-label="Paths">{{up['paths']}}</td>
    <td data-label="Time">{{up['seconds']}}</td>
  </tr>
  % end
  </tbody>
</table>
% end

<h2>Changed files</h2>
% if run.changed_files:
<ul class="changed-files">
  % for name in run.changed_files:
  <li><code>{{name}}</code></li>
  % end
</ul>
% else:
<p class="empty">No changed files recorded.</p>
% end
% if run.filters:
<p class="filters-used">Filters: {{', '.join(run.filters)}}</p>
% end
