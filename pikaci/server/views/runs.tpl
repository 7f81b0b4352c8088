% rebase('layout', title=title, slug=slug, refresh=refresh, logged_in=logged_in)
<h1>Runs</h1>
<form class="filters" method="get">
  <label>Status
    <select name="status">
      <option value="">any</option>
      % for name in statuses:
      <option value="{{name}}"{{!' selected' if name == status else ''}}>{{name}}</option>
      % end
    </select>
  </label>
  <label>Target <input name="target" value="{{target}}" size="14"></label>
  <button type="submit">Filter</button>
</form>
% for problem in problems:
<p class="problem" role="status">unreadable: {{problem}}</p>
% end
% if not rows:
<p class="empty">No runs{{' match these filters' if status or target else ' yet'}}.</p>
% else:
<table class="runs cards">
  <thead><tr><th>Run</th><th>Status</th><th>Target</th><th>Jobs</th><th>Duration</th><th>Started</th></tr></thead>
  <tbody>
  % for row in rows:
  <tr class="run" data-run="{{row['run_id']}}">
    <td data-label="Run"><a href="{{row['url']}}">{{row['run_id']}}</a></td>
    <td data-label="Status"><span class="badge status-{{row['status']}}">{{row['status']}}</span></td>
    <td data-label="Target" title="{{row['description']}}">{{row['target']}}</td>
    <td data-label="Jobs">{{row['jobs']}}</td>
    <td data-label="Duration">{{row['duration']}}</td>
    <td data-label="Started"><time datetime="{{row['created_at']}}" title="{{row['created_at']}}">{{row['age']}}</time></td>
  </tr>
  % end
  </tbody>
</table>
% end
% if next_url:
<p class="more"><a rel="next" href="{{next_url}}">Older runs</a></p>
% end
