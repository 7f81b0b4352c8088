% rebase('layout', title=title, slug=slug, logged_in=logged_in)
<h1 class="log-title"><a href="/repos/{{slug}}/runs/{{run.run_id}}">{{run.run_id}}</a> · {{job.id}} · {{kind}} log</h1>
<nav class="log-switch">
% for other in others:
  <a href="{{other['url']}}"{{!' aria-current="page"' if other['job'] == job.id and other['kind'] == kind else ''}}>{{other['job']}} {{other['kind']}}</a>
% end
</nav>
<nav class="log-pages">
  <span class="range">bytes {{start}}–{{end}} of {{size_text}}</span>
  % if first_url:
  <a href="{{first_url}}">Start</a> <a rel="prev" href="{{prev_url}}">Previous</a>
  % end
  % if next_url:
  <a rel="next" href="{{next_url}}">Next</a> <a href="{{last_url}}">End</a>
  % end
  <a href="{{raw_url}}">Raw</a>
  % if running:
  <span class="live" id="live-state">{{'live' if live else 'running'}}</span>
  % end
</nav>
<pre class="log" id="log" data-tail-url="{{tail_url}}" data-next-offset="{{end}}" data-live="{{'1' if live else '0'}}">{{!html}}</pre>
% if live:
<script src="/static/log.js" defer></script>
% end
